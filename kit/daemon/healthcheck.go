package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"
)

// Healthcheck is the "healthcheck" subcommand of every service binary, for
// Docker's HEALTHCHECK in images without a shell: it connects with the
// process's own settings (flags, LATCHKEY_* variables), sends a micro ping
// to $SRV.PING.<name> and returns 0 only when the instance running in this
// container (micro metadata "host" = this hostname, see kit/service)
// answers within LATCHKEY_HEALTHCHECK_TIMEOUT (default 3s); 1 otherwise.
func Healthcheck(name string, c *Common) int {
	if err := healthcheck(name, c); err != nil {
		fmt.Fprintf(os.Stderr, "%s healthcheck: %v\n", name, err)
		return 1
	}
	return 0
}

func healthcheck(name string, c *Common) error {
	timeout, err := time.ParseDuration(Env("LATCHKEY_HEALTHCHECK_TIMEOUT", "3s"))
	if err != nil {
		return fmt.Errorf("LATCHKEY_HEALTHCHECK_TIMEOUT: %w", err)
	}
	host, err := os.Hostname()
	if err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts := append(c.Auth.Options(), nats.Timeout(timeout), nats.MaxReconnects(0))
	nc, err := Connect(c.URL, name+"-healthcheck", quiet, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	if err := nc.PublishRequest("$SRV.PING."+name, inbox, nil); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	others := 0
	for {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			return fmt.Errorf("no answer from %s on %s within %s (%d other instances answered): %w", name, host, timeout, others, err)
		}
		var pong struct {
			Metadata map[string]string `json:"metadata"`
		}
		if json.Unmarshal(m.Data, &pong) == nil && pong.Metadata["host"] == host {
			return nil
		}
		others++
	}
}
