// Command latchkey-router runs one instance of the latchkey key-value
// router. Every flag can also be set by its LATCHKEY_* environment variable;
// a flag on the command line wins.
//
//	latchkey-router --server nats://127.0.0.1:4222 --shards 3
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/latchkey/latchkey/services/router"
	"github.com/nats-io/nats.go"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("latchkey-router failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	fs := flag.NewFlagSet("latchkey-router", flag.ExitOnError)
	url := fs.String("server", env("LATCHKEY_NATS_URL", nats.DefaultURL), "NATS server URL(s), comma-separated (LATCHKEY_NATS_URL)")
	prefix := fs.String("prefix", env("LATCHKEY_PREFIX", ""), "subject prefix of the deployment; empty means latchkey (LATCHKEY_PREFIX)")
	shards := fs.Int("shards", envInt("LATCHKEY_SHARDS", 0), "number of shards; creates the shard map if absent, 0 uses the existing map (LATCHKEY_SHARDS)")
	replicas := fs.Int("replicas", envInt("LATCHKEY_REPLICAS", 1), "JetStream replicas of the shard map bucket (LATCHKEY_REPLICAS)")
	maxValue := fs.Int("max-value", envInt("LATCHKEY_MAX_VALUE", 0), "largest value in bytes; 0 means 512 KiB (LATCHKEY_MAX_VALUE)")
	_ = fs.Parse(os.Args[1:])

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	nc, err := nats.Connect(*url, nats.Name("latchkey-router"), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "err", err) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "url", c.ConnectedUrl()) }))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", *url, err)
	}
	defer nc.Close()

	startCtx, startCancel := context.WithTimeout(ctx, 30*time.Second)
	srv, err := router.Start(startCtx, nc, router.Config{
		Prefix: *prefix, Shards: *shards, Replicas: *replicas, MaxValueBytes: *maxValue, Logger: log,
	})
	startCancel()
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("stopping: answering requests in flight")
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer stopCancel()
	if err := srv.Stop(stopCtx); err != nil {
		log.Warn("stop", "err", err)
	}
	return nc.Drain()
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envInt(name string, def int) int {
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
