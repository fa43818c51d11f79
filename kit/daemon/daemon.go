// Package daemon is the shared main of latchkey's service binaries: flags
// that fall back to LATCHKEY_* environment variables, slog logging with
// trace ids, tracing and Prometheus metrics from the standard settings, a
// NATS connection that reconnects forever and says so, and a graceful stop
// on SIGINT/SIGTERM that answers requests in flight before draining.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/latchkey/latchkey/kit/limits"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/nats-io/nats.go"
)

// Common holds the flags every service binary has.
type Common struct {
	URL         string
	Prefix      string
	MetricsAddr string
	LogLevel    string
	LogFormat   string
	Auth        Auth
}

// Flags registers the common flags on fs.
func Flags(fs *flag.FlagSet) *Common {
	c := &Common{}
	fs.StringVar(&c.URL, "server", Env("LATCHKEY_NATS_URL", Env("NATS_URL", nats.DefaultURL)), "NATS server URL(s), comma-separated (LATCHKEY_NATS_URL)")
	fs.StringVar(&c.Prefix, "prefix", Env("LATCHKEY_PREFIX", ""), "subject prefix of the deployment; empty means latchkey (LATCHKEY_PREFIX)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", Env("LATCHKEY_METRICS_ADDR", ""), "serve Prometheus metrics on this address, e.g. :9090; empty serves none (LATCHKEY_METRICS_ADDR)")
	fs.StringVar(&c.LogLevel, "log-level", Env("LATCHKEY_LOG_LEVEL", "info"), "debug, info, warn or error (LATCHKEY_LOG_LEVEL)")
	fs.StringVar(&c.LogFormat, "log-format", Env("LATCHKEY_LOG_FORMAT", "text"), "text or json (LATCHKEY_LOG_FORMAT)")
	c.Auth.flags(fs)
	return c
}

// Env returns the environment variable name, or def when it is unset.
func Env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// EnvInt is Env for whole numbers; a malformed value stops the program
// with a message naming the variable.
func EnvInt(name string, def int) int {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q is not a whole number\n", name, v)
		os.Exit(2)
	}
	return n
}

// Logger builds the process logger from level and format.
func Logger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	var h slog.Handler
	switch strings.ToLower(format) {
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	case "text", "":
		h = slog.NewTextHandler(os.Stderr, opts)
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
	return slog.New(telemetry.LogHandler(h)), nil
}

// Stopper is a running service.
type Stopper interface{ Stop(context.Context) error }

// StartFunc starts a service on a connected nc.
type StartFunc func(ctx context.Context, nc *nats.Conn, log *slog.Logger) (Stopper, error)

// Main parses args into fs (which must hold the Common flags), lets check
// (if not nil) refuse bad flags before anything connects, runs the service
// started by start until SIGINT or SIGTERM, stops it gracefully and exits
// non-zero on failure.
//
// Two subcommands come first when given: "healthcheck" (see Healthcheck)
// and "secrets" (see Secrets), so scratch images need no shell for them.
func Main(name string, fs *flag.FlagSet, c *Common, args []string, check func() error, start StartFunc) {
	if len(args) > 0 {
		switch args[0] {
		case "healthcheck":
			_ = fs.Parse(args[1:])
			os.Exit(Healthcheck(name, c))
		case "secrets":
			os.Exit(Secrets(args[1:], os.Stdout, os.Stderr))
		}
	}
	_ = fs.Parse(args)
	log, err := Logger(c.LogLevel, c.LogFormat)
	if err == nil && check != nil {
		err = check()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	if err := run(name, c, log, start); err != nil {
		var r *refusal
		if errors.As(err, &r) {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, r.err)
			os.Exit(2)
		}
		log.Error(name+" failed", "err", err)
		os.Exit(1)
	}
}

// refusal is a setting found unusable once connected (see Refuse).
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

// Refuse marks err (nil stays nil) as a refusal of the settings: returned
// by a StartFunc, Main prints it and exits 2, as for a bad flag, rather
// than 1, because some settings can only be checked against the server.
func Refuse(err error) error {
	if err == nil {
		return nil
	}
	return &refusal{err: err}
}

// CheckMaxValue refuses a --max-value (0: the default) whose messages the
// connected server's max_payload cannot carry (limits.CheckMaxValue). A
// StartFunc calls it before it serves anything.
func CheckMaxValue(nc *nats.Conn, maxValue int) error {
	if err := limits.CheckMaxValue(maxValue, nc.MaxPayload()); err != nil {
		return Refuse(fmt.Errorf("--max-value (LATCHKEY_MAX_VALUE) does not fit the NATS server at %s: %w", nc.ConnectedUrlRedacted(), err))
	}
	return nil
}

func run(name string, c *Common, log *slog.Logger, start StartFunc) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	shutdownTracing, err := telemetry.Setup(ctx, name)
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = shutdownTracing(sctx)
	}()
	if addr, err := telemetry.ServeMetrics(ctx, c.MetricsAddr, log); err != nil {
		return fmt.Errorf("metrics on %s: %w", c.MetricsAddr, err)
	} else if addr != nil {
		log.Info("serving Prometheus metrics", "url", "http://"+addr.String()+"/metrics")
	}

	nc, err := Connect(c.URL, name, log, c.Auth.Options()...)
	if err != nil {
		return err
	}
	defer nc.Close()

	startCtx, startCancel := context.WithTimeout(ctx, 60*time.Second)
	svc, err := start(startCtx, nc, log)
	startCancel()
	if err != nil {
		return err
	}
	log.Info(name+" ready", "nats", nc.ConnectedUrl(), "tracing", telemetry.Enabled())
	<-ctx.Done()
	log.Info("stopping: answering requests in flight, then draining NATS")
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer stopCancel()
	if err := svc.Stop(stopCtx); err != nil {
		log.Warn("stop", "err", err)
	}
	return nc.Drain()
}

// Connect dials NATS with unlimited reconnects and logs every change of
// connection state, so an operator sees why requests fail. extra (e.g.
// Auth.Options) is applied last.
func Connect(url, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	// A 10 s connect timeout (nats.go's default is 2 s): a server busy
	// starting next to many clients on a small machine, with TLS and
	// password checks, can take longer than 2 s to finish a handshake.
	//
	// Pings every 2 s, two unanswered: a server that is frozen or cut off
	// without closing the socket (SIGSTOP, docker pause, a partition, a
	// network disconnect) is left within about 6 s, where nats.go's
	// defaults (2 min, two pings) kept a service attached to it, its
	// subscriptions unreachable, for up to 6 min. Reconnects are tried
	// every 250 ms, not 2 s, so the service is back on a live server
	// quickly.
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false), nats.Timeout(10 * time.Second),
		nats.PingInterval(2 * time.Second), nats.MaxPingsOutstanding(2), nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "err", err) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "url", c.ConnectedUrl()) }),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Error("NATS async error", "subject", subj, "err", err)
		})}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	return nc, nil
}
