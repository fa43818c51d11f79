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

	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/latchkey/latchkey/suite"
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

	d, err := suite.StartServer(ctx, suite.ServerConfig{
		Options: suite.Options{Prefix: global.prefix, Shards: *shards, Replicas: 1, Logger: log},
		Dir:     *data, Host: host, Port: port, Name: "latchkey-dev", SyncAlways: *syncAlways,
	})
	if err != nil {
		return err
	}
	printDevBanner(d.URL, global.prefix, *data, *shards)
	stopExtra := d.ServeNewShards(ctx) // shard ids a `latchkey shards set` adds
	<-ctx.Done()
	stopExtra()
	log.Info("interrupted, shutting down (press Ctrl-C again to force)")
	stopCtx, cancel := context.WithTimeout(context.Background(), devStopTimeout)
	defer cancel()
	d.Stop(stopCtx)
	log.Info("stopped cleanly")
	return nil
}

// flagSet reports whether the command line set the named flag.
func flagSet(fs *flag.FlagSet, name string) (set bool) {
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
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
