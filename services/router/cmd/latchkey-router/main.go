// Command latchkey-router runs one instance of the latchkey key-value
// router. Every flag can also be set by its LATCHKEY_* environment variable;
// a flag on the command line wins. Tracing follows the standard OTEL_*
// environment (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME).
//
//	latchkey-router --server nats://127.0.0.1:4222 --shards 3 --metrics-addr :9101
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"

	"github.com/latchkey/latchkey/kit/daemon"
	"github.com/latchkey/latchkey/services/router"
	"github.com/nats-io/nats.go"
)

func main() {
	fs := flag.NewFlagSet("latchkey-router", flag.ExitOnError)
	common := daemon.Flags(fs)
	shards := fs.Int("shards", daemon.EnvInt("LATCHKEY_SHARDS", 0), "number of shards; creates the shard map if absent, 0 uses the existing map (LATCHKEY_SHARDS)")
	replicas := fs.Int("replicas", daemon.EnvInt("LATCHKEY_REPLICAS", 1), "JetStream replicas of the shard map bucket (LATCHKEY_REPLICAS)")
	maxValue := fs.Int("max-value", daemon.EnvInt("LATCHKEY_MAX_VALUE", 0), "largest value in bytes; 0 means 512 KiB (LATCHKEY_MAX_VALUE)")
	daemon.Main("latchkey-router", fs, common, os.Args[1:], nil, func(ctx context.Context, nc *nats.Conn, log *slog.Logger) (daemon.Stopper, error) {
		if err := daemon.CheckMaxValue(nc, *maxValue); err != nil {
			return nil, err // before anything is created or served
		}
		return router.Start(ctx, nc, router.Config{
			Prefix: common.Prefix, Shards: *shards, Replicas: *replicas, MaxValueBytes: *maxValue, Logger: log,
		})
	})
}
