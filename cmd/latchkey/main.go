// Command latchkey is the command line of latchkey: it runs a complete
// development deployment (`latchkey dev`) and reads and writes keys and
// locks of any deployment. `latchkey help` lists the commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/latchkey/latchkey/kit/telemetry"
)

// command is one subcommand. run gets the arguments after the command name
// and parses them with newFlags/parseArgs, so global flags work after the
// command name too.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) error
}

// commands is the command table; a command lives in its own file.
var commands = map[string]command{
	"dev":   {"dev", "run NATS with JetStream and every latchkey service in this process", devCmd},
	"get":   {"get", "print the value of a key", getCmd},
	"put":   {"put", "store a value under a key", putCmd},
	"del":   {"del", "delete a key", delCmd},
	"scan":  {"scan", "list the keys that start with a prefix, in key order", scanCmd},
	"watch": {"watch", "print every change of the keys that start with a prefix, as it happens", watchCmd},
	"lock":  {"lock", "acquire, renew, release, inspect a lock, or run a command under it", lockCmd},
	// bench.go; the workload engine is the bench module.
	"bench": {"bench", "measure throughput and latency next to the raw NATS floors (and etcd, Redis)", benchCmd},
	// check.go; the engine is the check module.
	"check": {"check", "drive traffic and check consistency and lock safety, optionally under faults", checkCmd},
	// shards.go; the move runs in the routers.
	"shards": {"shards", "show the shard set, or move the store to a new one online (set IDS --wait, abort)", shardsCmd},
}

func main() { os.Exit(run(os.Args[1:])) }

// run executes one command line and returns the process exit code.
func run(args []string) int {
	fs := newFlags("latchkey", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(os.Stdout)
			return exitOK
		}
		fmt.Fprintf(os.Stderr, "latchkey: %v; run `latchkey help`\n", err)
		return exitUsage
	}
	args = fs.Args()
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	name, args := args[0], args[1:]
	if name == "help" || name == "-h" || name == "--help" {
		return help(args)
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "latchkey: unknown command %q; run `latchkey help`\n", name)
		return exitUsage
	}
	// The first SIGINT/SIGTERM cancels ctx so a command can stop cleanly;
	// once it has, a second one kills the process the usual way.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); stop() }()
	// Client spans go where the OTEL_* environment says (nowhere when it
	// is unset); `latchkey dev` sets up its own, per service.
	if name != "dev" {
		if shutdown, err := telemetry.Setup(ctx, "latchkey-cli"); err != nil {
			fmt.Fprintf(os.Stderr, "latchkey: tracing disabled: %v\n", err)
		} else {
			defer func() {
				sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_ = shutdown(sctx)
			}()
		}
	}
	if err := cmd.run(ctx, args); err != nil {
		if !errors.Is(err, errHelp) {
			fmt.Fprintf(os.Stderr, "latchkey %s: %v\n", name, err)
		}
		return exitCode(err)
	}
	return exitOK
}

func help(args []string) int {
	if len(args) == 0 {
		usage(os.Stdout)
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "latchkey help: unknown command %q\n", args[0])
		return exitUsage
	}
	// Every command prints its own flags for -h.
	return exitCode(cmd.run(context.Background(), []string{"-h"}))
}

func usage(w *os.File) {
	fmt.Fprint(w, `latchkey: a sharded key-value and lock service on NATS.

Usage: latchkey [global flags] <command> [arguments and flags]

Commands:
`)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-6s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, `  %-6s %s

Global flags (also accepted after the command name):
  --server URL     NATS server(s) to connect to (default $NATS_URL, else %s)
  --prefix P       subject prefix of the deployment (default $LATCHKEY_PREFIX, else latchkey)
  --timeout D      how long one request may take (default 5s)
  --user U, --password P   NATS credentials (default $NATS_USER, $NATS_PASSWORD; or user:password@ in the URL)
  --creds F        NATS credentials file (default $NATS_CREDS)
  --tls-ca F       CA certificate for tls:// servers (default $NATS_CA)
  --inbox-prefix I reply inbox prefix, e.g. _INBOX.client for the compose deployment's client user
                   (default $LATCHKEY_INBOX_PREFIX)

Examples:
  latchkey dev                          # in another terminal
  latchkey put user:42 hello
  latchkey get user:42
  echo -n hello | latchkey put user:42 - --if-absent
  latchkey scan user: --all --json
  latchkey del user:42
  latchkey watch user: --initial

Exit codes:
  0  success
  1  error (invalid input, server error)
  2  usage error (unknown command, bad flag, missing argument)
  3  not found (get of a missing key)
  4  conflict (revision mismatch, stale fence, lock held)
  5  unavailable (cannot reach NATS or a latchkey service; retry)

Run 'latchkey help <command>' for the flags of one command.
`, "help", "print this help, or the flags of one command", defaultServer)
}
