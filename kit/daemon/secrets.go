package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// secretUser is one NATS user of the compose deployment and where its
// password lives under the secrets directory. Each directory is its own
// volume in deploy/compose, mounted only where that password is needed.
type secretUser struct {
	name, file, variable string
}

// secretUsers are the users of deploy/compose/nats/nats.conf. The route
// password is the cluster's (server to server), kept with the servers'
// own file.
var secretUsers = []secretUser{
	{"client", "client/password", "CLIENT_PASSWORD"},
	{"admin", "admin/password", "ADMIN_PASSWORD"},
	{"ops", "ops/password", "OPS_PASSWORD"},
	{"router", "router/password", "ROUTER_PASSWORD"},
	{"storage", "storage/password", "STORAGE_PASSWORD"},
	{"storage_events", "storage/events-password", "STORAGE_EVENTS_PASSWORD"},
	{"locker", "locker/password", "LOCKER_PASSWORD"},
	{"route", "nats/route-password", "ROUTE_PASSWORD"},
}

// authFile is what the NATS servers include: bcrypt hashes of every user's
// password (the servers never hold the users' plaintext) and the route
// URLs with the cluster password.
const authFile = "nats/auth.conf"

// Secrets is the "secrets" subcommand of every service binary, run by the
// compose deployment's one-shot `secrets` service before anything else:
//
//	secrets init [--dir D] [--routes h:p,...]  create missing passwords (random, 32 bytes) and the servers' auth file
//	secrets print USER [--dir D] [--url U]     print USER's connection settings (NATS_URL with the password, inbox prefix)
//	secrets rotate USER [--dir D] [--routes ..] replace USER's password, then rewrite the auth file
//
// Existing passwords are kept, so init on every `up` changes nothing. It
// returns the process exit code.
func Secrets(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: secrets init|print USER|rotate USER [--dir /secrets] [--routes nats-1:6222,...] [--url nats://127.0.0.1:4222]")
		return 2
	}
	cmd, rest := args[0], args[1:]
	user := ""
	if cmd == "print" || cmd == "rotate" {
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			fmt.Fprintf(stderr, "secrets %s: which user? one of %s\n", cmd, userNames())
			return 2
		}
		user, rest = rest[0], rest[1:]
	}
	fs := flag.NewFlagSet("secrets "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", Env("LATCHKEY_SECRETS_DIR", "/secrets"), "secrets directory (LATCHKEY_SECRETS_DIR)")
	routes := fs.String("routes", Env("LATCHKEY_NATS_ROUTES", "nats-1:6222,nats-2:6222,nats-3:6222"), "host:port of every NATS server's cluster listener (LATCHKEY_NATS_ROUTES)")
	url := fs.String("url", Env("LATCHKEY_PRINT_URL", "nats://127.0.0.1:4222"), "server URL(s) to print with the credentials, comma-separated")
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	var err error
	switch cmd {
	case "init":
		err = initSecrets(*dir, *routes, "", stdout)
	case "rotate":
		err = initSecrets(*dir, *routes, user, stdout)
	case "print":
		err = printSecret(*dir, user, *url, stdout)
	default:
		err = fmt.Errorf("unknown command %q: want init, print or rotate", cmd)
	}
	if err != nil {
		fmt.Fprintf(stderr, "secrets %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func userNames() string {
	var n []string
	for _, u := range secretUsers {
		n = append(n, u.name)
	}
	return strings.Join(n, ", ")
}

func findUser(name string) (secretUser, error) {
	for _, u := range secretUsers {
		if u.name == name {
			return u, nil
		}
	}
	return secretUser{}, fmt.Errorf("no user %q: one of %s", name, userNames())
}

// initSecrets creates every missing password (and replaces rotate's), then
// rewrites the auth file from the password files.
func initSecrets(dir, routes, rotate string, out io.Writer) error {
	if rotate != "" {
		if _, err := findUser(rotate); err != nil {
			return err
		}
	}
	hashes := map[string]string{}
	var routePass string
	for _, u := range secretUsers {
		path := filepath.Join(dir, u.file)
		pass, err := readPassword(path)
		switch {
		case err == nil && u.name != rotate:
		case err == nil || errors.Is(err, fs.ErrNotExist):
			pass, err = newPassword()
			if err == nil {
				err = writeFile(path, pass+"\n")
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "new password for %s in %s\n", u.name, path)
		default:
			return err
		}
		if u.name == "route" {
			routePass = pass
		}
		// The servers keep only hashes. bcrypt's cost exists to slow down
		// guessing weak passwords; these are 256 random bits, so the
		// minimum cost is enough, and every connect (each healthcheck is
		// one) costs the server ~1 ms instead of ~100 ms at cost 10.
		h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
		if err != nil {
			return err
		}
		hashes[u.variable] = string(h)
	}
	var b strings.Builder
	b.WriteString("# Written by `secrets init` (kit/daemon/secrets.go); do not edit: run `secrets rotate USER`.\n")
	vars := make([]string, 0, len(hashes))
	for v := range hashes {
		vars = append(vars, v)
	}
	sort.Strings(vars)
	for _, v := range vars {
		if v == "ROUTE_PASSWORD" {
			continue // the route password is used in plaintext below
		}
		fmt.Fprintf(&b, "%s: %q\n", v, hashes[v])
	}
	fmt.Fprintf(&b, "ROUTE_PASSWORD: %q\n", routePass)
	var urls []string
	for _, hp := range strings.Split(routes, ",") {
		if hp = strings.TrimSpace(hp); hp != "" {
			urls = append(urls, fmt.Sprintf("%q", "nats-route://route:"+routePass+"@"+hp))
		}
	}
	if len(urls) == 0 {
		return errors.New("--routes lists no server")
	}
	fmt.Fprintf(&b, "ROUTES: [%s]\n", strings.Join(urls, ", "))
	return writeFile(filepath.Join(dir, authFile), b.String())
}

func printSecret(dir, user, urls string, out io.Writer) error {
	u, err := findUser(user)
	if err != nil {
		return err
	}
	pass, err := readPassword(filepath.Join(dir, u.file))
	if err != nil {
		return fmt.Errorf("%v (has `secrets init` run?)", err)
	}
	var withPass []string
	for _, s := range strings.Split(urls, ",") {
		scheme, hostport, ok := strings.Cut(strings.TrimSpace(s), "://")
		if !ok {
			scheme, hostport = "nats", s
		}
		withPass = append(withPass, scheme+"://"+u.name+":"+pass+"@"+hostport)
	}
	fmt.Fprintf(out, "NATS_USER=%s\nNATS_PASSWORD=%s\nNATS_URL=%s\nLATCHKEY_INBOX_PREFIX=_INBOX.%s\n", u.name, pass, strings.Join(withPass, ","), u.name)
	return nil
}

func readPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	p := strings.TrimSpace(string(b))
	if p == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return p, nil
}

func newPassword() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// writeFile replaces path atomically. The files are readable by every user
// of the containers that mount their volume (the services run as nobody,
// the one-shot writer as root without capabilities); each volume is mounted
// only where its password is needed.
func writeFile(path, data string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o444); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
