package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// credentials are one user's, as `docker compose run --rm secrets print
// USER` prints them.
type credentials struct{ user, password, inboxPrefix string }

// secret reads a user's generated password through the documented command.
func (s *stack) secret(ctx context.Context, t *testing.T, user string) credentials {
	t.Helper()
	out := s.run(ctx, t, "run", "--rm", "--no-deps", "secrets", "print", user)
	cr := credentials{user: user}
	for _, line := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "NATS_PASSWORD":
			cr.password = v
		case "LATCHKEY_INBOX_PREFIX":
			cr.inboxPrefix = v
		}
	}
	if len(cr.password) < 32 || cr.inboxPrefix == "" {
		t.Fatalf("secrets print %s: no password or inbox prefix in:\n%s", user, out)
	}
	return cr
}

// conn is a connection as one user that collects the asynchronous errors
// (permission violations) the server sends it.
type conn struct {
	nc   *nats.Conn
	mu   sync.Mutex
	errs []error
}

func (s *stack) connect(t *testing.T, user string, extra ...nats.Option) *conn {
	t.Helper()
	cn, err := s.dial(s.urls, user, extra...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(cn.nc.Close)
	return cn
}

func (s *stack) dial(urls, user string, extra ...nats.Option) (*conn, error) {
	cr := s.creds[user]
	cn := &conn{}
	opts := append([]nats.Option{nats.Name("deploy-test-" + user), nats.UserInfo(cr.user, cr.password),
		nats.CustomInboxPrefix(cr.inboxPrefix), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			cn.mu.Lock()
			cn.errs = append(cn.errs, err)
			cn.mu.Unlock()
		})}, extra...)
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		return nil, err
	}
	cn.nc = nc
	return cn, nil
}

// violation does op, then waits up to 3 s for the server's permission
// violation naming subject; it returns that error, or nil.
func (cn *conn) violation(subject string, op func() error, within time.Duration) (error, error) {
	cn.mu.Lock()
	cn.errs = nil
	cn.mu.Unlock()
	if err := op(); err != nil {
		return nil, err
	}
	_ = cn.nc.FlushTimeout(2 * time.Second)
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		cn.mu.Lock()
		for _, e := range cn.errs {
			if errors.Is(e, nats.ErrPermissionViolation) && strings.Contains(e.Error(), `"`+subject+`"`) {
				cn.mu.Unlock()
				return e, nil
			}
		}
		cn.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	return nil, nil
}

func mustViolate(t *testing.T, cn *conn, what, subject string, op func() error) {
	t.Helper()
	v, err := cn.violation(subject, op, 3*time.Second)
	switch {
	case err != nil:
		t.Errorf("%s %s: %v", what, subject, err)
	case v == nil:
		t.Errorf("%s %s: no permission violation within 3 s: the user may do it", what, subject)
	default:
		t.Logf("%s %s: refused (%v)", what, subject, v)
	}
}

func mustAllow(t *testing.T, cn *conn, what, subject string, op func() error) {
	t.Helper()
	v, err := cn.violation(subject, op, time.Second)
	if err != nil || v != nil {
		t.Errorf("%s %s: want allowed, got %v %v", what, subject, err, v)
	}
}

func publish(cn *conn, subject string) func() error {
	return func() error { return cn.nc.PublishRequest(subject, cn.nc.NewInbox(), []byte("{}")) }
}

func subscribe(cn *conn, subject string) func() error {
	return func() error {
		_, err := cn.nc.SubscribeSync(subject)
		return err
	}
}

// refused: no user, a wrong password and a known user without a password
// are all turned away at connect.
func refused(t *testing.T, s *stack) {
	for _, tc := range []struct {
		what string
		opts []nats.Option
	}{
		{"anonymous", nil},
		{"client with a wrong password", []nats.Option{nats.UserInfo("client", "not-the-password")}},
		{"router without a password", []nats.Option{nats.UserInfo("router", "")}},
	} {
		nc, err := nats.Connect(s.urls, append(tc.opts, nats.MaxReconnects(0), nats.Timeout(5*time.Second))...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected, want an authorization violation", tc.what)
			continue
		}
		if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: %v, want an authorization violation", tc.what, err)
			continue
		}
		t.Logf("%s: %v", tc.what, err)
	}
}

// clientBoundaries: the client user reaches the public API only.
func clientBoundaries(ctx context.Context, t *testing.T, s *stack, cl *conn, c *client.Client) {
	for _, subject := range []string{
		"latchkey.shard.0.put",                    // a shard, past the router
		"latchkey.shard.1.get",                    // ... reads too
		"$KV.latchkey_shard_0.a2V5",               // a shard bucket, past the fence check
		"$KV.latchkey_locks.ZGVwbG95",             // a lock record
		"$JS.API.STREAM.DELETE.KV_latchkey_locks", // `nats stream rm`
		"$JS.API.DIRECT.GET.KV_latchkey_shard_0",  // raw reads
		"$JS.API.INFO",                            // any JetStream API
		"latchkey.admin.shards",                   // the admin's
		"latchkey.watchctl.w1.cancel",             // storage's watch control
		"$SRV.INFO",                               // allowed: discovery ($SRV.>)
	} {
		if strings.HasPrefix(subject, "$SRV.") {
			mustAllow(t, cl, "publish", subject, publish(cl, subject))
			continue
		}
		mustViolate(t, cl, "publish", subject, publish(cl, subject))
	}
	for _, subject := range []string{"_INBOX.>", "_INBOX.router.>", "latchkey.kv.get", "latchkey.shard.>", "$KV.>"} {
		mustViolate(t, cl, "subscribe", subject, subscribe(cl, subject))
	}
	// A violation is an error on that one message or subscription: the
	// connection, and the services, go on.
	if _, err := c.Put(ctx, "deploy:after-violations", []byte("1")); err != nil {
		t.Errorf("put after the violations: %v", err)
	}
	// Without the custom inbox prefix a request's reply inbox (_INBOX.*)
	// is refused: the client and CLI must set it (LATCHKEY_INBOX_PREFIX).
	plain, err := nats.Connect(s.urls, nats.UserInfo("client", s.creds["client"].password), nats.MaxReconnects(0),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatalf("client without inbox prefix: %v", err)
	}
	defer plain.Close()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := client.New(plain).Put(rctx, "deploy:no-prefix", []byte("1")); err == nil {
		t.Errorf("a put with the default _INBOX prefix was answered: the client user may subscribe to _INBOX.*")
	} else {
		t.Logf("default inbox prefix: %v (as documented)", err)
	}
}

// adminOpsBoundaries: admin may use latchkey.admin.> (the routers' shard
// endpoints; reshardOnline drives a move with it) and nothing of the data;
// ops may read JetStream's stream and consumer info and nothing else.
func adminOpsBoundaries(ctx context.Context, t *testing.T, s *stack, ops *conn, js jetstream.JetStream) {
	admin := s.connect(t, "admin")
	mustAllow(t, admin, "publish", "latchkey.admin.shards.get", publish(admin, "latchkey.admin.shards.get"))
	for _, subject := range []string{"$KV.latchkey_meta.shardmap", "$JS.API.STREAM.INFO.KV_latchkey_meta", "latchkey.kv.put", "latchkey.shard.0.put"} {
		mustViolate(t, admin, "publish", subject, publish(admin, subject))
	}
	mustViolate(t, admin, "subscribe", "_INBOX.>", subscribe(admin, "_INBOX.>"))

	if _, err := streamInfo(ctx, js, "KV_latchkey_locks"); err != nil {
		t.Errorf("ops: stream info of the lock stream: %v", err)
	}
	for _, subject := range []string{"$JS.API.STREAM.DELETE.KV_latchkey_locks", "$JS.API.STREAM.PURGE.KV_latchkey_shard_0",
		"$JS.API.DIRECT.GET.KV_latchkey_shard_0", "$JS.API.STREAM.MSG.GET.KV_latchkey_locks", "$KV.latchkey_shard_0.a2V5",
		"latchkey.kv.put", "latchkey.admin.shards"} {
		mustViolate(t, ops, "publish", subject, publish(ops, subject))
	}
	// The lock stream is still there.
	if _, err := streamInfo(ctx, js, "KV_latchkey_locks"); err != nil {
		t.Errorf("ops: the lock stream after the refused delete: %v", err)
	}
}

// instances answers a $SRV.PING (what `nats micro ls` sends) and counts
// the distinct instances of each service that answer within 1.5 s.
func instances(nc *nats.Conn) (map[string]int, error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest("$SRV.PING", inbox, nil); err != nil {
		return nil, err
	}
	ids := map[string]map[string]bool{}
	deadline := time.Now().Add(1500 * time.Millisecond)
	for {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var pong struct{ Name, ID string }
		if json.Unmarshal(m.Data, &pong) == nil {
			if ids[pong.Name] == nil {
				ids[pong.Name] = map[string]bool{}
			}
			ids[pong.Name][pong.ID] = true
		}
	}
	n := map[string]int{}
	for name, set := range ids {
		n[name] = len(set)
	}
	return n, nil
}

func wantInstances(nc *nats.Conn) error {
	n, err := instances(nc)
	if err != nil {
		return err
	}
	for _, name := range []string{"latchkey-router", "latchkey-storage", "latchkey-locker"} {
		if n[name] != 2 {
			return fmt.Errorf("%d instances of %s answered $SRV.PING, want 2 (all: %v)", n[name], name, n)
		}
	}
	return nil
}

func discovery(t *testing.T, nc *nats.Conn) {
	if err := wantInstances(nc); err != nil {
		t.Error(err)
	}
}

// prober calls op in a loop, each call with its own short deadline, and
// measures the longest time from the last success before a failure to the
// next success: how long its callers could not be served.
type prober struct {
	name    string
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	ok      int
	failed  int
	longest time.Duration
	last    error // the latest retryable failure
	err     error // a failure that is not a 503 or timeout
}

func startProber(ctx context.Context, t *testing.T, name string, op func(ctx context.Context, i int) error) *prober {
	p := &prober{name: name, stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(p.halt)
	go func() {
		defer close(p.done)
		lastOK := time.Now()
		down := false
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			octx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := op(octx, i)
			cancel()
			p.mu.Lock()
			switch {
			case err == nil:
				p.ok++
				if down {
					p.longest = max(p.longest, time.Since(lastOK))
				}
				down, lastOK = false, time.Now()
			case retryable(err):
				p.failed++
				p.last = err
				down = true
			default:
				p.err = err
			}
			stop := p.err != nil
			p.mu.Unlock()
			if stop {
				return
			}
		}
	}()
	return p
}

func (p *prober) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

func (p *prober) waitOK(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p.mu.Lock()
		ok, err := p.ok, p.err
		p.mu.Unlock()
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		if ok >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d successes within 30 s", p.name, ok, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// report stops p and checks it never failed for good and was unavailable
// for at most bound.
func (p *prober) report(t *testing.T, bound time.Duration) {
	t.Helper()
	p.halt()
	t.Logf("%s: %d served, %d unavailable (503 or timeout, the latest: %v), longest outage %s",
		p.name, p.ok, p.failed, p.last, p.longest.Round(time.Millisecond))
	if p.err != nil {
		t.Errorf("%s: %v", p.name, p.err)
	}
	if p.longest > bound {
		t.Errorf("%s: unavailable for %s, want at most %s", p.name, p.longest.Round(time.Millisecond), bound)
	}
}

// statelessKill kills one router and one locker together while puts and
// lock reads run and a lease is kept alive: the other instances take over
// within 5 s, no acknowledged write is lost, and the lease stays ours.
func statelessKill(ctx context.Context, t *testing.T, s *stack, nc *nats.Conn, c *client.Client, written map[string]string) {
	l, err := c.Acquire(ctx, "deploy-stateless", client.WithOwner("deploy-test"), client.WithLeaseTTL(6*time.Second))
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	var mu sync.Mutex
	acked := map[string]string{}
	puts := startProber(ctx, t, "puts", func(ctx context.Context, i int) error {
		k, v := fmt.Sprintf("stateless:%05d", i), fmt.Sprint(i)
		_, err := c.Put(ctx, k, []byte(v))
		if err == nil {
			mu.Lock()
			acked[k] = v
			mu.Unlock()
		}
		return err
	})
	// Lock traffic on names of its own. Polling the held lock's state
	// (lock.get) at this rate makes its own keep-alive renewals fail with
	// 409 "contended" and the lease is lost, kills or not: a locker bug
	// (each confirmed read writes a barrier conditioned on the lock's key,
	// and renewals' conditional writes are refused while one is pending),
	// reported, not this test's subject.
	locks := startProber(ctx, t, "lock acquire+release", func(ctx context.Context, i int) error {
		time.Sleep(40 * time.Millisecond)
		ll, err := c.Acquire(ctx, fmt.Sprintf("deploy-stateless-%05d", i), client.WithLeaseTTL(5*time.Second), client.WithoutKeepAlive())
		if err != nil {
			return err
		}
		return ll.Release(ctx)
	})
	puts.waitOK(t, 20)
	locks.waitOK(t, 20)
	s.run(ctx, t, "kill", "router-1", "locker-1")
	killed := time.Now()
	// Past a full lease: the keep-alive must have renewed through locker-2.
	time.Sleep(8 * time.Second)
	puts.report(t, 5*time.Second)
	locks.report(t, 5*time.Second)
	select {
	case <-l.Done():
		t.Errorf("the lease ended %s after the kill: %v", time.Since(killed).Round(time.Millisecond), l.Err())
	default:
	}
	if st, err := c.LockInfo(ctx, l.Name()); err != nil || !st.Held || st.Token != l.Token() {
		t.Errorf("the kept lease: lock reads %+v, %v; we hold token %d", st, err, l.Token())
	}
	if _, err := c.Put(ctx, "fenced-stateless", []byte("ok"), client.WithFence(l.Name(), l.Token())); err != nil {
		t.Errorf("fenced put with the kept lease: %v", err)
	} else {
		written["fenced-stateless"] = "ok"
	}
	if err := l.Release(ctx); err != nil {
		t.Errorf("release: %v", err)
	}
	mu.Lock()
	for k, v := range acked {
		written[k] = v
	}
	mu.Unlock()
	verify(ctx, t, c, written)

	s.run(ctx, t, "up", "-d", "--no-build", "--wait", "--wait-timeout", "120", "router-1", "locker-1")
	waitFor(ctx, t, "router-1 and locker-1 back in $SRV.PING", 30*time.Second, func(context.Context) error {
		return wantInstances(nc)
	})
}

// tlsOn restarts the deployment with compose.tls.yaml and a dev CA from
// scripts/make-dev-certs.sh: clients must then speak TLS and trust the CA,
// the services connect over TLS (their healthchecks too), and every write
// made so far reads back after the whole cluster restarted.
func tlsOn(ctx context.Context, t *testing.T, s *stack, written map[string]string) {
	dir := t.TempDir()
	// The NATS servers run as nobody: they must reach the key.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	root := repoRoot(t)
	if out, err := exec.CommandContext(ctx, filepath.Join(root, "scripts", "make-dev-certs.sh"), dir).CombinedOutput(); err != nil {
		t.Fatalf("make-dev-certs.sh: %v\n%s", err, out)
	}
	s.env = append(s.env, "LATCHKEY_TLS_DIR="+dir)
	s.compose = append(s.compose, "-f", "compose.tls.yaml")
	begin := time.Now()
	s.run(ctx, t, "up", "-d", "--no-build", "--wait", "--wait-timeout", "180")
	t.Logf("restarted with TLS, every service healthy after %s", time.Since(begin).Round(time.Second))
	urls := strings.ReplaceAll(s.urls, "nats://", "tls://")

	if nc, err := nats.Connect(urls, nats.UserInfo("client", s.creds["client"].password), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Errorf("connected over TLS without the dev CA: the server certificate is not checked")
	} else {
		t.Logf("without the CA: %v", err)
	}
	cn, err := s.dial(urls, "client", nats.RootCAs(filepath.Join(dir, "ca.pem")))
	if err != nil {
		t.Fatalf("connect over TLS with the dev CA: %v", err)
	}
	defer cn.nc.Close()
	if !cn.nc.TLSRequired() {
		t.Errorf("the server does not require TLS")
	}
	c := client.New(cn.nc, client.WithTimeout(3*time.Second))
	waitFor(ctx, t, "a put over TLS", 60*time.Second, func(ctx context.Context) error {
		_, err := c.Put(ctx, "deploy:tls", []byte("1"))
		return err
	})
	written["deploy:tls"] = "1"
	verify(ctx, t, c, written)
	if err := wantInstances(cn.nc); err != nil {
		t.Error(err)
	}
	t.Run("client password rotated", func(t *testing.T) {
		rotate(ctx, t, s, urls, nats.RootCAs(filepath.Join(dir, "ca.pem")))
	})
}

// watch: a watch opened as the client user gets the event of a put (the
// events come from storage's storage_events connection to the client's
// inbox).
func watch(ctx context.Context, t *testing.T, c *client.Client) {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := c.Watch(wctx, "watchdeploy:")
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer w.Stop()
	// Put until the event comes: the first put may precede the feed.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if _, err := c.Put(ctx, "watchdeploy:a", []byte("1")); err != nil {
				t.Fatalf("put: %v", err)
			}
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watch ended: %v", w.Err())
			}
			if ev.Type == client.EventPut && ev.Key == "watchdeploy:a" && string(ev.Value) == "1" {
				return
			}
		case <-wctx.Done():
			t.Fatalf("no put event within 30 s: %v", w.Err())
		}
	}
}

// dashboardQueries returns every Prometheus query of the compose
// deployment's Grafana dashboards, with Grafana's interval variables
// filled for its 5 s scrapes.
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy", "compose", "grafana", "dashboards", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	type ds struct{ Type string }
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []struct {
				Title      string
				Datasource *ds
				Targets    []struct {
					RefID      string `json:"refId"`
					Expr       string
					Datasource *ds
				}
			}
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				ref := p.Datasource
				if tg.Datasource != nil {
					ref = tg.Datasource
				}
				if ref == nil || ref.Type != "prometheus" || tg.Expr == "" {
					continue
				}
				expr := strings.NewReplacer("$__rate_interval", "30s", "$__interval", "5s", "$__range", "5m").Replace(tg.Expr)
				out[filepath.Base(f)+" / "+p.Title+" / "+tg.RefID] = expr
			}
		}
	}
	return out
}

// panelQueries evaluates every dashboard panel query with promtool against
// the deployment's own Prometheus (what Grafana would ask): none may fail,
// the targets panel must show all six services up, and it reports how many
// returned data after the traffic and faults so far.
func panelQueries(ctx context.Context, t *testing.T, port int) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		skipOrFail(t, "no promtool (apt-get install prometheus)")
	}
	server := fmt.Sprintf("http://127.0.0.1:%d", port)
	queries := dashboardQueries(t)
	withData := 0
	for where, expr := range queries {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := exec.CommandContext(qctx, promtool, "query", "instant", "-o", "json", server, expr).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s: %s: %v: %s", where, expr, err, out)
			continue
		}
		var r []struct {
			Metric map[string]string `json:"metric"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Errorf("%s: %s: not a vector: %s", where, expr, out)
			continue
		}
		if len(r) > 0 {
			withData++
		}
	}
	t.Logf("%d dashboard queries evaluated by promtool against the deployment's Prometheus, %d with data", len(queries), withData)
	// Restarted instances are up again within a few scrapes.
	waitFor(ctx, t, "six latchkey targets up", 60*time.Second, func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, promtool, "query", "instant", "-o", "json", server, `up{job=~"latchkey.*"} == 1`).CombinedOutput()
		var up []struct{}
		if err != nil || json.Unmarshal(out, &up) != nil || len(up) != 6 {
			return fmt.Errorf("up{job=~\"latchkey.*\"} == 1: %d series, want 6 (%v: %s)", len(up), err, out)
		}
		return nil
	})
}

// rotate follows the documented rotation of the client's password:
// `secrets rotate client`, a configuration reload (SIGHUP) of the three
// servers; the old password is refused from then on, the new one works.
func rotate(ctx context.Context, t *testing.T, s *stack, urls string, extra ...nats.Option) {
	old := s.creds["client"]
	s.run(ctx, t, "run", "--rm", "--no-deps", "secrets", "rotate", "client")
	s.run(ctx, t, "kill", "-s", "HUP", "nats-1", "nats-2", "nats-3")
	s.creds["client"] = s.secret(ctx, t, "client")
	if s.creds["client"].password == old.password {
		t.Fatal("rotate kept the client's password")
	}
	waitFor(ctx, t, "the old client password refused", 30*time.Second, func(context.Context) error {
		nc, err := nats.Connect(urls, append([]nats.Option{nats.UserInfo("client", old.password), nats.MaxReconnects(0)}, extra...)...)
		if err == nil {
			nc.Close()
			return errors.New("the old password still connects")
		}
		return nil
	})
	cn, err := s.dial(urls, "client", extra...)
	if err != nil {
		t.Fatalf("connect with the new password: %v", err)
	}
	defer cn.nc.Close()
	if _, err := client.New(cn.nc, client.WithTimeout(3*time.Second)).Get(ctx, "deploy:tls"); err != nil {
		t.Errorf("get with the new password: %v", err)
	}
}
