// Command latchkey-storage serves latchkey shards from JetStream KV
// buckets. Flags override LATCHKEY_* environment variables.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
)

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}

func main() {
	server := flag.String("server", env("LATCHKEY_NATS_URL", nats.DefaultURL), "NATS server URL(s), comma separated (LATCHKEY_NATS_URL)")
	prefix := flag.String("prefix", env("LATCHKEY_PREFIX", "latchkey"), "subject prefix (LATCHKEY_PREFIX)")
	shards := flag.String("shards", env("LATCHKEY_SHARDS", ""), "comma-separated shard ids to serve, required (LATCHKEY_SHARDS)")
	replicas := flag.Int("replicas", envInt("LATCHKEY_REPLICAS", 1), "JetStream replicas of shard buckets (LATCHKEY_REPLICAS)")
	maxValue := flag.Int("max-value", envInt("LATCHKEY_MAX_VALUE", 0), "largest value in bytes, 0 = 512 KiB (LATCHKEY_MAX_VALUE)")
	logFormat := flag.String("log-format", env("LATCHKEY_LOG_FORMAT", "json"), "log format: json or text (LATCHKEY_LOG_FORMAT)")
	flag.Parse()

	var h slog.Handler = slog.NewJSONHandler(os.Stderr, nil)
	if *logFormat == "text" {
		h = slog.NewTextHandler(os.Stderr, nil)
	}
	log := slog.New(h)
	if err := run(log, *server, storage.Config{
		Prefix: *prefix, Shards: splitList(*shards), Replicas: *replicas, MaxValueBytes: *maxValue, Logger: log,
	}); err != nil {
		log.Error("latchkey-storage failed", "err", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func run(log *slog.Logger, url string, cfg storage.Config) error {
	if len(cfg.Shards) == 0 {
		return fmt.Errorf("--shards (or LATCHKEY_SHARDS) is required, e.g. --shards 0,1,2")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	nc, err := nats.Connect(url, nats.Name("latchkey-storage"), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("nats disconnected", "err", err) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrl()) }))
	if err != nil {
		return fmt.Errorf("connect %s: %w", url, err)
	}
	defer nc.Drain()
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	srv, err := storage.Start(startCtx, nc, cfg)
	cancel()
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("stopping")
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Stop(stopCtx)
}
