package daemon_test

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/daemon"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// TestAuthFlags: a user, a password file and an inbox prefix from the
// LATCHKEY_* variables connect to a server that requires them, and
// requests reply under the prefix.
func TestAuthFlags(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true}
	opts.Users = []*server.User{{Username: "svc", Password: "s3cret", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"echo"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"echo", "_INBOX.svc.>"}},
		Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}}}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(5 * time.Second) {
		t.Fatal("server not ready")
	}
	pass := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pass, []byte("s3cret\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LATCHKEY_NATS_USER", "svc")
	t.Setenv("LATCHKEY_NATS_PASSWORD_FILE", pass)
	t.Setenv("LATCHKEY_INBOX_PREFIX", "_INBOX.svc")
	c := daemon.Flags(flag.NewFlagSet("x", flag.ContinueOnError))
	nc, err := nats.Connect(srv.ClientURL(), c.Auth.Options()...)
	if err != nil {
		t.Fatalf("connect with the flags' credentials: %v", err)
	}
	defer nc.Close()
	sub, _ := nc.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	defer sub.Unsubscribe()
	m, err := nc.Request("echo", []byte("hi"), 2*time.Second)
	if err != nil || string(m.Data) != "hi" {
		t.Fatalf("request under the inbox prefix: %v, %v", m, err)
	}
	if _, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(0)); err == nil {
		t.Fatal("an anonymous connection was accepted")
	}
}
