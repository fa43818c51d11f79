// Command latchkey-locker runs latchkey's lock service against a NATS
// server with JetStream.
//
// Flags override environment variables:
//
//	--server   LATCHKEY_NATS_URL   NATS URL(s), default nats://127.0.0.1:4222
//	--prefix   LATCHKEY_PREFIX     subject prefix, default "latchkey"
//	--replicas LATCHKEY_REPLICAS   replicas of the lock bucket, default 1
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

	"github.com/latchkey/latchkey/services/locker"
	"github.com/nats-io/nats.go"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "latchkey-locker:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run() error {
	replicas, err := strconv.Atoi(env("LATCHKEY_REPLICAS", "1"))
	if err != nil {
		return fmt.Errorf("LATCHKEY_REPLICAS: %w", err)
	}
	server := flag.String("server", env("LATCHKEY_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s) (env LATCHKEY_NATS_URL)")
	prefix := flag.String("prefix", env("LATCHKEY_PREFIX", "latchkey"), "subject prefix (env LATCHKEY_PREFIX)")
	flag.IntVar(&replicas, "replicas", replicas, "JetStream replicas of the lock bucket (env LATCHKEY_REPLICAS)")
	flag.Parse()

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("service", locker.ServiceName)
	nc, err := nats.Connect(*server,
		nats.Name(locker.ServiceName),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("nats disconnected", "err", err) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrl()) }),
	)
	if err != nil {
		return fmt.Errorf("connect %s: %w", *server, err)
	}
	defer nc.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	srv, err := locker.Start(startCtx, nc, locker.Config{Prefix: *prefix, Replicas: replicas, Logger: log})
	cancel()
	if err != nil {
		return err
	}
	log.Info("locker started", "nats", nc.ConnectedUrl(), "prefix", *prefix, "replicas", replicas)
	<-ctx.Done()
	log.Info("stopping")
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Stop(stopCtx); err != nil {
		return err
	}
	return nc.Drain()
}
