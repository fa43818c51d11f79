package daemon

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
)

// Auth is how a service binary authenticates to NATS and checks its TLS
// certificate: the deployment in deploy/compose gives every service a user
// of its own whose password sits in a file (LATCHKEY_NATS_PASSWORD_FILE),
// and a subscribe permission on its own inbox prefix only.
type Auth struct {
	User         string
	Password     string // prefer PasswordFile: environments leak
	PasswordFile string
	Creds        string // a NATS .creds file (JWT + nkey), instead of user/password
	CA           string // PEM roots for the server's certificate (tls:// URLs)
	Cert, Key    string // client certificate, when the server asks for one
	InboxPrefix  string // e.g. _INBOX.router; empty keeps nats.go's _INBOX
}

func (a *Auth) flags(fs *flag.FlagSet) {
	fs.StringVar(&a.User, "nats-user", Env("LATCHKEY_NATS_USER", ""), "NATS user name (LATCHKEY_NATS_USER)")
	fs.StringVar(&a.Password, "nats-password", Env("LATCHKEY_NATS_PASSWORD", ""), "NATS password; prefer --nats-password-file (LATCHKEY_NATS_PASSWORD)")
	fs.StringVar(&a.PasswordFile, "nats-password-file", Env("LATCHKEY_NATS_PASSWORD_FILE", ""), "file holding the NATS password (LATCHKEY_NATS_PASSWORD_FILE)")
	fs.StringVar(&a.Creds, "nats-creds", Env("LATCHKEY_NATS_CREDS", ""), "NATS credentials file (JWT and nkey seed) (LATCHKEY_NATS_CREDS)")
	fs.StringVar(&a.CA, "nats-ca", Env("LATCHKEY_NATS_CA", ""), "PEM file of the CA that signed the NATS server certificate (LATCHKEY_NATS_CA)")
	fs.StringVar(&a.Cert, "nats-cert", Env("LATCHKEY_NATS_CERT", ""), "client certificate for NATS TLS, with --nats-key (LATCHKEY_NATS_CERT)")
	fs.StringVar(&a.Key, "nats-key", Env("LATCHKEY_NATS_KEY", ""), "client key for NATS TLS (LATCHKEY_NATS_KEY)")
	fs.StringVar(&a.InboxPrefix, "inbox-prefix", Env("LATCHKEY_INBOX_PREFIX", ""), "prefix of this process's reply inboxes, e.g. _INBOX.router; empty is _INBOX (LATCHKEY_INBOX_PREFIX)")
}

// Options turns the settings into nats.go options. A password file that
// cannot be read is fatal: starting without credentials would only fail
// later with a less clear "authorization violation".
func (a *Auth) Options() []nats.Option {
	opts, err := a.options()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return opts
}

func (a *Auth) options() ([]nats.Option, error) {
	var opts []nats.Option
	pass := a.Password
	if a.PasswordFile != "" {
		b, err := os.ReadFile(a.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-password-file (LATCHKEY_NATS_PASSWORD_FILE): %w", err)
		}
		pass = strings.TrimSpace(string(b))
		if pass == "" {
			return nil, fmt.Errorf("--nats-password-file (LATCHKEY_NATS_PASSWORD_FILE) %s is empty", a.PasswordFile)
		}
	}
	if a.User != "" {
		opts = append(opts, nats.UserInfo(a.User, pass))
	} else if pass != "" {
		return nil, fmt.Errorf("a NATS password without a user: set --nats-user (LATCHKEY_NATS_USER)")
	}
	if a.Creds != "" {
		opts = append(opts, nats.UserCredentials(a.Creds))
	}
	if a.CA != "" {
		opts = append(opts, nats.RootCAs(a.CA))
	}
	if a.Cert != "" || a.Key != "" {
		if a.Cert == "" || a.Key == "" {
			return nil, fmt.Errorf("--nats-cert and --nats-key go together")
		}
		opts = append(opts, nats.ClientCert(a.Cert, a.Key))
	}
	if a.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(a.InboxPrefix))
	}
	return opts, nil
}
