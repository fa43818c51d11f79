package suite

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/latchkey/latchkey/kit/natsembed"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// stopTimeout bounds the clean-up of a start that failed.
const stopTimeout = 15 * time.Second

// ServerConfig configures StartServer.
type ServerConfig struct {
	Options
	Dir        string // JetStream data, created if missing; required
	Host       string // default 127.0.0.1
	Port       int    // 0 picks a free port
	Name       string // server name, also the services' connection name; default latchkey
	SyncAlways bool   // fsync every write before its ack
}

// Deployment is an embedded NATS server with JetStream and the services on
// it: what `latchkey dev` runs.
type Deployment struct {
	Server *server.Server
	URL    string // the server's client URL
	// Conn is the in-process connection the services share: no TCP hop,
	// and it still behaves like any other NATS client.
	Conn *nats.Conn
	// Events is storage's watch event connection. It logs in as
	// natsembed.EventsUser, which may publish only to _INBOX.>; clients
	// without credentials may do anything.
	Events   *nats.Conn
	Services *Services
	opts     Options
}

// StartServer starts an embedded server and the services, and returns once
// they serve. On failure it stops what it started.
func StartServer(ctx context.Context, cfg ServerConfig) (d *Deployment, err error) {
	if cfg.Name == "" {
		cfg.Name = "latchkey"
	}
	cfg.Options = cfg.Options.withDefaults()
	d = &Deployment{opts: cfg.Options}
	defer func() {
		if err != nil {
			// ctx may be what failed the start: undo it on a fresh,
			// bounded one.
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			d.Stop(stopCtx)
			d = nil
		}
	}()
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	cfg.Logger.Info("starting NATS with JetStream", "listen", addr, "data", cfg.Dir)
	// The event user's password is made up per start: only this process
	// knows it.
	eventsPass := nuid.Next()
	users, noAuth := natsembed.WatchUsers(eventsPass)
	d.Server, err = natsembed.Start(natsembed.Options{Host: cfg.Host, Port: cfg.Port, StoreDir: cfg.Dir, Name: cfg.Name,
		SyncAlways: cfg.SyncAlways, Users: users, NoAuthUser: noAuth})
	if err != nil {
		return nil, fmt.Errorf("starting NATS on %s: %w", addr, err)
	}
	d.URL = d.Server.ClientURL()
	d.Conn, err = nats.Connect(d.URL, nats.InProcessServer(d.Server), nats.Name(cfg.Name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connecting to the embedded NATS: %w", err)
	}
	d.Events, err = nats.Connect(d.URL, nats.InProcessServer(d.Server), nats.Name(cfg.Name+"-watch-events"), nats.MaxReconnects(-1),
		nats.UserInfo(natsembed.EventsUser, eventsPass))
	if err != nil {
		return nil, fmt.Errorf("connecting the watch event connection: %w", err)
	}
	d.Services, err = StartServices(ctx, d.Conn, d.Events, cfg.Options)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Stop undoes StartServer in reverse order: the services first (they
// finish their in-flight requests), then the connection drains (within
// ctx), then the server goes.
func (d *Deployment) Stop(ctx context.Context) {
	log := d.opts.Logger
	if d.Services != nil {
		_ = d.Services.Stop(ctx) // Services.Stop logs what failed
		d.Services = nil
	}
	if d.Events != nil {
		d.Events.Close()
	}
	if d.Conn != nil {
		log.Info("draining the connection")
		closed := make(chan struct{})
		d.Conn.SetClosedHandler(func(*nats.Conn) { close(closed) })
		if err := d.Conn.Drain(); err != nil {
			// Already closed, or closing: nothing left to drain.
			d.Conn.Close()
		} else {
			select {
			case <-closed:
			case <-ctx.Done():
				d.Conn.Close()
			}
		}
	}
	if d.Server != nil {
		log.Info("shutting NATS down")
		d.Server.Shutdown()
		d.Server.WaitForShutdown()
	}
}
