// Command latchkey-locker runs one instance of latchkey's lock service.
// Every flag can also be set by its LATCHKEY_* environment variable; a flag
// on the command line wins. Tracing follows the standard OTEL_* environment.
//
//	latchkey-locker --server nats://127.0.0.1:4222 --replicas 1 --metrics-addr :9103
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"

	"github.com/latchkey/latchkey/kit/daemon"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/nats-io/nats.go"
)

func main() {
	fs := flag.NewFlagSet(locker.ServiceName, flag.ExitOnError)
	common := daemon.Flags(fs)
	replicas := fs.Int("replicas", daemon.EnvInt("LATCHKEY_REPLICAS", 1), "JetStream replicas of the lock bucket (LATCHKEY_REPLICAS)")
	daemon.Main(locker.ServiceName, fs, common, os.Args[1:], nil, func(ctx context.Context, nc *nats.Conn, log *slog.Logger) (daemon.Stopper, error) {
		return locker.Start(ctx, nc, locker.Config{Prefix: common.Prefix, Replicas: *replicas, Logger: log})
	})
}
