package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/nats-io/nats.go"
)

// defaultServer is used when neither --server nor $NATS_URL is set.
const defaultServer = "nats://127.0.0.1:4222"

// Exit codes, documented in `latchkey help`.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitNotFound    = 3
	exitConflict    = 4
	exitUnavailable = 5
)

// global holds the flags every command accepts.
var global = struct {
	server  string
	prefix  string
	timeout time.Duration
}{
	server:  envOr("NATS_URL", defaultServer),
	prefix:  envOr("LATCHKEY_PREFIX", "latchkey"),
	timeout: 5 * time.Second,
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// errHelp means -h was asked for and the usage was printed.
var errHelp = flag.ErrHelp

// usageError is a mistake on the command line (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// usagef reports a command-line mistake.
func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// newFlags returns a flag set for a command that also accepts the global
// flags. usage is the synopsis line printed by -h, e.g. "get KEY [flags]".
func newFlags(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// The flag package prints every parse error with the whole usage;
	// parseArgs prints the usage only for -h, and the error as one line.
	fs.SetOutput(io.Discard)
	fs.StringVar(&global.server, "server", global.server, "NATS server URL(s), comma separated ($NATS_URL)")
	fs.StringVar(&global.prefix, "prefix", global.prefix, "subject prefix of the deployment ($LATCHKEY_PREFIX)")
	fs.DurationVar(&global.timeout, "timeout", global.timeout, "how long one request may take")
	if synopsis != "" {
		fs.Usage = func() {
			fmt.Fprintf(fs.Output(), "Usage: latchkey %s\n\nFlags:\n", synopsis)
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseArgs parses flags anywhere among args (flag.Parse alone stops at the
// first positional argument) and returns the positional arguments. After
// "--" everything is positional, so a value like "-5" can be written.
// "-" is positional (it means stdin where a command says so).
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stderr)
				fs.Usage()
				return nil, errHelp
			}
			return nil, usagef("%v; see `latchkey help %s`", err, fs.Name())
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// wantArgs checks the number of positional arguments.
func wantArgs(fs *flag.FlagSet, pos []string, names ...string) error {
	if len(pos) != len(names) {
		return usagef("want %d argument(s) %v, got %d; see `latchkey help %s`", len(names), names, len(pos), fs.Name())
	}
	return nil
}

// dial connects to the deployment named by the global flags. The returned
// function closes the connection.
func dial(ctx context.Context) (*client.Client, func(), error) {
	nc, err := nats.Connect(global.server,
		nats.Name("latchkey-cli"),
		nats.Timeout(global.timeout),
		nats.MaxReconnects(0),
	)
	if err != nil {
		return nil, nil, &unreachableError{server: global.server, err: err}
	}
	c := client.New(nc, client.WithPrefix(global.prefix), client.WithTimeout(global.timeout))
	return c, nc.Close, nil
}

// unreachableError means NATS itself could not be reached (exit code 5).
type unreachableError struct {
	server string
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot connect to NATS at %s: %v (is `latchkey dev` running? set --server or $NATS_URL)", e.server, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	var ue *usageError
	var ne *unreachableError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &ne), errors.Is(err, client.ErrUnavailable):
		return exitUnavailable
	case errors.Is(err, client.ErrNotFound):
		return exitNotFound
	case errors.Is(err, client.ErrConflict):
		return exitConflict
	}
	return exitError
}
