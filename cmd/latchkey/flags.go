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
	server      string
	prefix      string
	timeout     time.Duration
	user        string
	password    string
	creds       string
	ca          string
	inboxPrefix string
}{
	server:      envOr("NATS_URL", defaultServer),
	prefix:      envOr("LATCHKEY_PREFIX", "latchkey"),
	timeout:     5 * time.Second,
	user:        os.Getenv("NATS_USER"),
	password:    os.Getenv("NATS_PASSWORD"),
	creds:       os.Getenv("NATS_CREDS"),
	ca:          os.Getenv("NATS_CA"),
	inboxPrefix: os.Getenv("LATCHKEY_INBOX_PREFIX"),
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
	fs.StringVar(&global.user, "user", global.user, "NATS user; a user:password@ in the URL works too ($NATS_USER)")
	fs.StringVar(&global.password, "password", global.password, "NATS password ($NATS_PASSWORD)")
	fs.StringVar(&global.creds, "creds", global.creds, "NATS credentials file ($NATS_CREDS)")
	fs.StringVar(&global.ca, "tls-ca", global.ca, "PEM file of the CA that signed the server's certificate, for tls:// URLs ($NATS_CA)")
	fs.StringVar(&global.inboxPrefix, "inbox-prefix", global.inboxPrefix, "reply inbox prefix, e.g. _INBOX.client where the user may subscribe only there ($LATCHKEY_INBOX_PREFIX)")
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
	nc, err := nats.Connect(global.server, connectOptions("latchkey-cli", nats.MaxReconnects(0))...)
	if err != nil {
		return nil, nil, &unreachableError{server: global.server, err: err}
	}
	c := client.New(nc, client.WithPrefix(global.prefix), client.WithTimeout(global.timeout))
	return c, nc.Close, nil
}

// connectOptions are the options of every connection the CLI makes: its
// name, the request timeout, the credentials, TLS roots and inbox prefix
// of the global flags, then extra.
func connectOptions(name string, extra ...nats.Option) []nats.Option {
	opts := []nats.Option{nats.Name(name), nats.Timeout(global.timeout)}
	if global.user != "" {
		opts = append(opts, nats.UserInfo(global.user, global.password))
	}
	if global.creds != "" {
		opts = append(opts, nats.UserCredentials(global.creds))
	}
	if global.ca != "" {
		opts = append(opts, nats.RootCAs(global.ca))
	}
	if global.inboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(global.inboxPrefix))
	}
	return append(opts, extra...)
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
