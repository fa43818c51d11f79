// Command latchkey-storage serves latchkey shards from JetStream KV
// buckets. Every flag can also be set by its LATCHKEY_* environment
// variable; a flag on the command line wins. Tracing follows the standard
// OTEL_* environment.
//
//	latchkey-storage --server nats://127.0.0.1:4222 --shards 0,1,2 --metrics-addr :9102
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/latchkey/latchkey/kit/daemon"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
)

func main() {
	fs := flag.NewFlagSet(storage.ServiceName, flag.ExitOnError)
	common := daemon.Flags(fs)
	shards := fs.String("shards", daemon.Env("LATCHKEY_SHARDS", ""), "comma-separated shard ids to serve, e.g. 0,1,2; required (LATCHKEY_SHARDS)")
	replicas := fs.Int("replicas", daemon.EnvInt("LATCHKEY_REPLICAS", 1), "JetStream replicas of the shard buckets (LATCHKEY_REPLICAS)")
	maxValue := fs.Int("max-value", daemon.EnvInt("LATCHKEY_MAX_VALUE", 0), "largest value in bytes; 0 means 512 KiB (LATCHKEY_MAX_VALUE)")
	var ids []string
	check := func() error {
		for _, id := range strings.Split(*shards, ",") {
			if id = strings.TrimSpace(id); id != "" {
				ids = append(ids, id)
			}
		}
		if len(ids) == 0 {
			return fmt.Errorf("--shards (LATCHKEY_SHARDS) is required: the shard ids this instance serves, e.g. 0,1,2")
		}
		return nil
	}
	daemon.Main(storage.ServiceName, fs, common, os.Args[1:], check, func(ctx context.Context, nc *nats.Conn, log *slog.Logger) (daemon.Stopper, error) {
		if err := daemon.CheckMaxValue(nc, *maxValue); err != nil {
			return nil, err // before anything is created or served
		}
		return storage.Start(ctx, nc, storage.Config{
			Prefix: common.Prefix, Shards: ids, Replicas: *replicas, MaxValueBytes: *maxValue, Logger: log,
		})
	})
}
