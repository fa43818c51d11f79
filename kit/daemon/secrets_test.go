package daemon_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/latchkey/latchkey/kit/daemon"
	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"
)

func secrets(t *testing.T, args ...string) string {
	t.Helper()
	var out, errs bytes.Buffer
	if code := daemon.Secrets(args, &out, &errs); code != 0 {
		t.Fatalf("secrets %v: exit %d: %s", args, code, errs.String())
	}
	return out.String()
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestSecretsInitRotatePrint: init makes every password once, rotate
// replaces one, print shows it, and the compose deployment's nats.conf
// loads with the generated file: every user, hashed, and the routes.
func TestSecretsInitRotatePrint(t *testing.T) {
	dir := t.TempDir()
	secrets(t, "init", "--dir", dir)
	client, router := read(t, filepath.Join(dir, "client/password")), read(t, filepath.Join(dir, "router/password"))
	if len(client) != 64 || client == router {
		t.Fatalf("passwords %q, %q: want two different 32-byte hex strings", client, router)
	}
	secrets(t, "init", "--dir", dir)
	if read(t, filepath.Join(dir, "client/password")) != client {
		t.Fatal("a second init changed the client's password")
	}
	secrets(t, "rotate", "client", "--dir", dir)
	rotated := read(t, filepath.Join(dir, "client/password"))
	if rotated == client || read(t, filepath.Join(dir, "router/password")) != router {
		t.Fatal("rotate client: want a new client password and the router's kept")
	}
	out := secrets(t, "print", "client", "--dir", dir, "--url", "nats://127.0.0.1:4222,tls://127.0.0.1:4223")
	for _, want := range []string{"NATS_USER=client\n", "NATS_PASSWORD=" + rotated + "\n",
		"NATS_URL=nats://client:" + rotated + "@127.0.0.1:4222,tls://client:" + rotated + "@127.0.0.1:4223\n",
		"LATCHKEY_INBOX_PREFIX=_INBOX.client\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("print client: no %q in\n%s", want, out)
		}
	}
	var errs bytes.Buffer
	if code := daemon.Secrets([]string{"print", "nobody", "--dir", dir}, &bytes.Buffer{}, &errs); code == 0 {
		t.Error("print of an unknown user succeeded")
	}

	// The real server configuration with the generated file next to it.
	conf, err := os.ReadFile(filepath.Join("..", "..", "deploy", "compose", "nats", "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "etc", "auth"), 0o755); err != nil {
		t.Fatal(err)
	}
	auth, _ := os.ReadFile(filepath.Join(dir, "nats", "auth.conf"))
	if strings.Contains(string(auth), rotated) {
		t.Fatal("auth.conf holds the client's plaintext password")
	}
	_ = os.WriteFile(filepath.Join(dir, "etc", "auth", "auth.conf"), auth, 0o644)
	path := filepath.Join(dir, "etc", "nats.conf")
	_ = os.WriteFile(path, conf, 0o644)
	t.Setenv("NATS_SERVER_NAME", "nats-1")
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats.conf with the generated auth.conf: %v", err)
	}
	users := map[string]*server.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
	}
	for _, name := range []string{"client", "admin", "ops", "router", "storage", "storage_events", "locker"} {
		u := users[name]
		if u == nil {
			t.Errorf("nats.conf has no user %s", name)
			continue
		}
		if u.Permissions == nil || u.Permissions.Publish == nil {
			t.Errorf("user %s has no publish permissions: it could publish anything", name)
		}
		file := filepath.Join(dir, name, "password")
		if name == "storage_events" {
			file = filepath.Join(dir, "storage", "events-password")
		}
		pass := read(t, file)
		if bcrypt.CompareHashAndPassword([]byte(u.Password), []byte(pass)) != nil {
			t.Errorf("user %s: the server's hash does not match the password file", name)
		}
	}
	if opts.Cluster.Username != "route" || len(opts.Routes) != 3 || opts.Routes[0].User == nil {
		t.Errorf("cluster: user %q, routes %v: want route authentication on 3 routes", opts.Cluster.Username, opts.Routes)
	}
	if opts.NoAuthUser != "" {
		t.Errorf("no_auth_user %q: anonymous connections would be let in", opts.NoAuthUser)
	}
}
