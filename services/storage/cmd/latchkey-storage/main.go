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
	// The watch event connection (docs/DEPLOY.md): its own NATS user, which
	// may publish only to _INBOX.>, so no watch can make storage publish
	// to $JS.API or $KV. TLS settings are the main connection's.
	evUser := fs.String("events-user", daemon.Env("LATCHKEY_EVENTS_USER", ""), "NATS user of the watch event connection, allowed to publish only to _INBOX.> (LATCHKEY_EVENTS_USER)")
	evPassFile := fs.String("events-password-file", daemon.Env("LATCHKEY_EVENTS_PASSWORD_FILE", ""), "file holding that user's password (LATCHKEY_EVENTS_PASSWORD_FILE)")
	evCreds := fs.String("events-creds", daemon.Env("LATCHKEY_EVENTS_CREDS", ""), "NATS credentials file of the watch event connection, instead of user/password (LATCHKEY_EVENTS_CREDS)")
	noWatch := fs.Bool("no-watch", daemon.Env("LATCHKEY_NO_WATCH", "") == "true", "serve no watches: open no event connection (LATCHKEY_NO_WATCH=true)")
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
		var events *nats.Conn
		if !*noWatch {
			auth := common.Auth // same TLS; its own identity when one is given
			if *evUser != "" || *evCreds != "" {
				auth.User, auth.Password, auth.PasswordFile, auth.Creds = *evUser, "", *evPassFile, *evCreds
			} else {
				log.Warn("watch events go out on a second connection of the storage user; give it a user that may publish only to _INBOX.> " +
					"(--events-user/--events-password-file or --events-creds)")
			}
			var err error
			if events, err = daemon.Connect(common.URL, storage.ServiceName+"-watch-events", log, auth.Options()...); err != nil {
				return nil, fmt.Errorf("watch event connection: %w", err)
			}
		}
		st, err := storage.Start(ctx, nc, storage.Config{
			Prefix: common.Prefix, Shards: ids, Replicas: *replicas, MaxValueBytes: *maxValue, EventConn: events, Logger: log,
		})
		if err != nil {
			if events != nil {
				events.Close()
			}
			return nil, err
		}
		return withEvents{st, events}, nil
	})
}

// withEvents stops storage, then closes its event connection.
type withEvents struct {
	*storage.Server
	events *nats.Conn
}

func (w withEvents) Stop(ctx context.Context) error {
	err := w.Server.Stop(ctx)
	if w.events != nil {
		w.events.Close()
	}
	return err
}
