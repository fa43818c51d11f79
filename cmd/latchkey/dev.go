package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/latchkey/latchkey/services/router"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// devStopTimeout bounds the clean shutdown; past it `latchkey dev` gives up
// waiting on services and shuts the NATS server down anyway.
const devStopTimeout = 15 * time.Second

func devCmd(ctx context.Context, args []string) error {
	fs := newFlags("dev", "dev [--listen HOST:PORT] [--data DIR] [--shards N] [--log-level LEVEL] [--metrics-addr ADDR] [--otlp ADDR]\n\nRuns an embedded NATS server with JetStream and the storage, router and locker\nservices in this process, until Ctrl-C. Data in --data survives restarts.\nPrometheus metrics of all three services are served on --metrics-addr; with\n--otlp (or OTEL_EXPORTER_OTLP_ENDPOINT) each service exports its spans as\nlatchkey-router, latchkey-storage and latchkey-locker.")
	listen := fs.String("listen", envOr("LATCHKEY_LISTEN", "127.0.0.1:4222"), "address NATS clients connect to ($LATCHKEY_LISTEN)")
	data := fs.String("data", defaultDataDir(), "directory of the JetStream data")
	shards := fs.Int("shards", 3, "number of shards")
	syncAlways := fs.Bool("sync-always", false, "fsync every write (slower; nothing acknowledged is lost on a crash)")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	metricsAddr := fs.String("metrics-addr", envOr("LATCHKEY_METRICS_ADDR", "127.0.0.1:9464"), "serve Prometheus metrics at http://ADDR/metrics; empty serves none ($LATCHKEY_METRICS_ADDR)")
	otlp := fs.String("otlp", "", "export traces over OTLP to ADDR: host:port for gRPC (Jaeger: 127.0.0.1:4317) or http://host:4318 for HTTP; default: the OTEL_* environment, else none")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return usagef("--log-level: %v", err)
	}
	if *shards < 1 {
		return usagef("--shards must be at least 1, got %d", *shards)
	}
	host, portStr, err := net.SplitHostPort(*listen)
	if err != nil {
		return usagef("--listen %q: %v", *listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return usagef("--listen %q: port must be a number between 0 and 65535", *listen)
	}
	log := slog.New(telemetry.LogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))

	shutdownTracing, err := telemetry.SetupServices(ctx, "latchkey-client", *otlp)
	if err != nil {
		return fmt.Errorf("tracing to %q: %w", *otlp, err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdownTracing(sctx); err != nil {
			log.Warn("flushing traces", "err", err)
		}
	}()
	addr, err := telemetry.ServeMetrics(ctx, *metricsAddr, log)
	switch {
	case err != nil && (flagSet(fs, "metrics-addr") || os.Getenv("LATCHKEY_METRICS_ADDR") != ""):
		return fmt.Errorf("--metrics-addr %s: %w", *metricsAddr, err)
	case err != nil:
		// The default port is taken (another `latchkey dev`, say): a dev
		// deployment is still useful without metrics.
		log.Warn("metrics not served; choose a free port with --metrics-addr", "addr", *metricsAddr, "err", err)
	case addr != nil:
		log.Info("serving Prometheus metrics", "url", "http://"+addr.String()+"/metrics")
	}

	d := &devDeployment{log: log}
	if err := d.start(ctx, host, port, *data, *shards, *syncAlways); err != nil {
		stopCtx, cancel := context.WithTimeout(context.Background(), devStopTimeout)
		defer cancel()
		d.stop(stopCtx)
		return err
	}
	printDevBanner(d.url, global.prefix, *data, *shards)
	<-ctx.Done()
	log.Info("interrupted, shutting down (press Ctrl-C again to force)")
	stopCtx, cancel := context.WithTimeout(context.Background(), devStopTimeout)
	defer cancel()
	d.stop(stopCtx)
	log.Info("stopped cleanly")
	return nil
}

// flagSet reports whether the command line set the named flag.
func flagSet(fs *flag.FlagSet, name string) (set bool) {
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// devDeployment is everything `latchkey dev` runs, in start order.
type devDeployment struct {
	log   *slog.Logger
	url   string
	stopS func()     // shuts the NATS server down
	nc    *nats.Conn // the services' connection
	stops []devStop  // services, in start order
}

type devStop struct {
	name string
	stop func(context.Context) error
}

func (d *devDeployment) start(ctx context.Context, host string, port int, dir string, shards int, syncAlways bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	d.log.Info("starting NATS with JetStream", "listen", net.JoinHostPort(host, strconv.Itoa(port)), "data", dir)
	// Clients without credentials may do anything (the tour needs no
	// login); the watch event connection logs in as a user that may
	// publish only to _INBOX.>, with a password made up per start.
	eventsPass := nuid.Next()
	users, noAuth := natstest.WatchUsers(eventsPass)
	srv, err := natstest.Start(natstest.Options{Host: host, Port: port, StoreDir: dir, Name: "latchkey-dev", SyncAlways: syncAlways,
		Users: users, NoAuthUser: noAuth})
	if err != nil {
		return fmt.Errorf("starting NATS on %s: %w", net.JoinHostPort(host, strconv.Itoa(port)), err)
	}
	d.stopS = func() { srv.Shutdown(); srv.WaitForShutdown() }
	d.url = srv.ClientURL()

	// The services share one in-process connection: no TCP hop, and it
	// still behaves like any other NATS client.
	d.nc, err = nats.Connect(d.url, nats.InProcessServer(srv), nats.Name("latchkey-dev"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connecting to the embedded NATS: %w", err)
	}
	events, err := nats.Connect(d.url, nats.InProcessServer(srv), nats.Name("latchkey-dev-watch-events"), nats.MaxReconnects(-1),
		nats.UserInfo(natstest.EventsUser, eventsPass))
	if err != nil {
		return fmt.Errorf("connecting the watch event connection: %w", err)
	}
	d.stops = append(d.stops, devStop{"watch event connection", func(context.Context) error { events.Close(); return nil }})
	prefix := global.prefix
	ids := make([]string, shards)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}

	d.log.Info("starting storage", "shards", shards)
	st, err := storage.Start(ctx, d.nc, storage.Config{Prefix: prefix, Shards: ids, Replicas: 1, EventConn: events, Logger: d.log.With("component", "storage")})
	if err != nil {
		return fmt.Errorf("starting storage: %w", err)
	}
	d.stops = append(d.stops, devStop{"storage", st.Stop})

	d.log.Info("starting router")
	rt, err := router.Start(ctx, d.nc, router.Config{Prefix: prefix, Shards: shards, Replicas: 1, Logger: d.log.With("component", "router")})
	if err != nil {
		return fmt.Errorf("starting router: %w", err)
	}
	d.stops = append(d.stops, devStop{"router", rt.Stop})

	d.log.Info("starting locker")
	lk, err := locker.Start(ctx, d.nc, locker.Config{Prefix: prefix, Replicas: 1, Logger: d.log.With("component", "locker")})
	if err != nil {
		return fmt.Errorf("starting locker: %w", err)
	}
	d.stops = append(d.stops, devStop{"locker", lk.Stop})
	return nil
}

// stop undoes start in reverse order: services first (they finish their
// in-flight requests), then the connection drains, then the server goes.
func (d *devDeployment) stop(ctx context.Context) {
	for i := len(d.stops) - 1; i >= 0; i-- {
		s := d.stops[i]
		d.log.Info("stopping " + s.name)
		if err := s.stop(ctx); err != nil {
			d.log.Warn("stopping "+s.name, "err", err)
		}
	}
	if d.nc != nil {
		d.log.Info("draining the connection")
		closed := make(chan struct{})
		d.nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
		if err := d.nc.Drain(); err != nil {
			// Already closed, or closing: nothing left to drain.
			d.nc.Close()
		} else {
			select {
			case <-closed:
			case <-ctx.Done():
				d.nc.Close()
			}
		}
	}
	if d.stopS != nil {
		d.log.Info("shutting NATS down")
		d.stopS()
	}
}

func printDevBanner(url, prefix, dir string, shards int) {
	subj := subjects.New(prefix)
	fmt.Printf(`latchkey dev is ready: NATS with JetStream at %s, %d shards, data in %s

Connect:
  export NATS_URL=%s

Try it with the nats CLI:
  nats req %s '{"key":"user:42","value":"aGVsbG8="}'
  nats req %s '{"key":"user:42"}'
  nats micro ls

or with this CLI:
  latchkey put user:42 hello && latchkey get user:42
  latchkey watch user: --initial

Press Ctrl-C to stop.
`, url, shards, dir, url, subj.Public(subjects.KVPut), subj.Public(subjects.KVGet))
}

// defaultDataDir keeps dev data in the user's cache directory, where it
// survives restarts without littering the working directory.
func defaultDataDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "latchkey", "dev")
	}
	return ".latchkey"
}
