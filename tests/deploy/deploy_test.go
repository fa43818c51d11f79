// Package deploy_test runs the Docker Compose deployment of
// deploy/compose (with the offline override: images built here by
// scripts/build-images.sh, nothing pulled) and checks it end to end through
// the loopback-published NATS ports, as the users the deployment creates:
// anonymous access refused, every user's permission boundaries, micro
// discovery of every instance, key-value and lock smoke, then the loss of a
// router and a locker, of a storage instance and of the NATS server leading
// a shard, and finally TLS turned on over the same data.
//
// It needs a working Docker engine and Compose v2 (the `docker compose`
// plugin; scripts/build-compose.sh builds it). Without them it skips,
// unless CI=true, where it fails. LATCHKEY_SKIP_DEPLOY=1 skips it outside CI.
package deploy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// stack is one running compose project.
type stack struct {
	compose []string // the compose command and its file/project flags
	dir     string   // deploy/compose
	env     []string // port variables
	ports   map[string]int
	urls    string                 // the three published NATS ports
	creds   map[string]credentials // client, admin, ops, from `secrets print`
}

// latchkeyServices are the compose services running latchkey binaries.
var latchkeyServices = []string{"router-1", "router-2", "storage-a", "storage-b", "locker-1", "locker-2"}

func inCI() bool { return os.Getenv("CI") == "true" }

// skipOrFail skips outside CI and fails under CI, where the deployment
// test is part of the suite.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if inCI() {
		t.Fatalf(format+" (CI=true: the deployment test must run)", args...)
	}
	t.Skipf(format, args...)
}

// composeCommand finds Compose v2, the docker plugin users type (`up
// --wait`, service_completed_successfully). Debian's docker-compose is v1,
// a different program, and is not used.
func composeCommand(ctx context.Context) ([]string, error) {
	out, err := exec.CommandContext(ctx, "docker", "compose", "version", "--short").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("'docker compose' (Compose v2) does not work: %v: %s (scripts/build-compose.sh builds it)", err, lastLine(out))
	}
	if v := strings.TrimPrefix(strings.TrimSpace(string(out)), "v"); !strings.HasPrefix(v, "2.") {
		return nil, fmt.Errorf("'docker compose' is version %s, want 2.x (scripts/build-compose.sh builds it)", v)
	}
	return []string{"docker", "compose"}, nil
}

// freePorts reserves n loopback ports and releases them for Docker to bind.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// run runs a compose command with the stack's environment and returns its
// output, failing t on a non-zero exit.
func (s *stack) run(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.try(ctx, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (s *stack) try(ctx context.Context, args ...string) (string, error) {
	full := append(append([]string{}, s.compose...), args...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), s.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func imageExists(ctx context.Context, name string) bool {
	return exec.CommandContext(ctx, "docker", "image", "inspect", name).Run() == nil
}

// TestComposeDeployment is the deployment test: build, start (timing up
// to healthy), check access control, smoke, kill a router and a locker,
// kill storage-a, kill the NATS server leading shard 0, restart them, kill
// storage-b, turn TLS on, and always tear everything down (volumes
// included).
func TestComposeDeployment(t *testing.T) {
	if os.Getenv("LATCHKEY_SKIP_DEPLOY") == "1" && !inCI() {
		t.Skip("LATCHKEY_SKIP_DEPLOY=1")
	}
	if testing.Short() && !inCI() {
		t.Skip("-short: the deployment test builds images and starts containers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		skipOrFail(t, "docker is not usable here (docker info: %v): %s", err, lastLine(out))
	}
	composeCmd, err := composeCommand(ctx)
	if err != nil {
		skipOrFail(t, "%v", err)
	}
	root := repoRoot(t)

	start := time.Now()
	build := exec.CommandContext(ctx, filepath.Join(root, "scripts", "build-images.sh"))
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/build-images.sh: %v\n%s", err, out)
	}
	t.Logf("images built in %s:\n%s", time.Since(start).Round(time.Second), out)

	// A project name of our own and free loopback ports: nothing collides
	// with another run or with a `latchkey dev` on 4222.
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	project := "latchkey-test-" + hex.EncodeToString(suffix)
	names := []string{"LATCHKEY_NATS_PORT_1", "LATCHKEY_NATS_PORT_2", "LATCHKEY_NATS_PORT_3",
		"LATCHKEY_JAEGER_UI_PORT", "LATCHKEY_OTLP_GRPC_PORT", "LATCHKEY_OTLP_HTTP_PORT",
		"LATCHKEY_PROMETHEUS_PORT", "LATCHKEY_GRAFANA_PORT"}
	s := &stack{dir: filepath.Join(root, "deploy", "compose"), ports: map[string]int{}}
	for i, p := range freePorts(t, len(names)) {
		s.ports[names[i]] = p
		s.env = append(s.env, fmt.Sprintf("%s=%d", names[i], p))
	}
	s.compose = append(composeCmd, "-p", project, "-f", "compose.yaml", "-f", "compose.offline.yaml")
	// Optional back ends: only when their images exist, and Prometheus only
	// with its config present (a missing bind-mount source would be created
	// as a directory in the work tree).
	var profiles []string
	if imageExists(ctx, "latchkey/prometheus:dev") && fileExists(filepath.Join(s.dir, "prometheus", "prometheus.yml")) {
		profiles = append(profiles, "prometheus")
	}
	if imageExists(ctx, "latchkey/jaeger:dev") {
		profiles = append(profiles, "jaeger")
	}
	for _, p := range profiles {
		s.compose = append(s.compose, "--profile", p)
	}
	if !slices.Contains(profiles, "jaeger") {
		s.env = append(s.env, "LATCHKEY_OTLP_ENDPOINT=") // no collector: tracing off, no export errors
	}
	t.Logf("compose project %s, profiles %v, ports %v", project, profiles, s.ports)

	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer ccancel()
		if t.Failed() {
			// Keep every container's whole log for the post-mortem; show
			// the latchkey services' last lines here.
			logs, _ := s.try(cctx, "logs", "--no-color", "--timestamps")
			path := filepath.Join(os.TempDir(), project+".log")
			if err := os.WriteFile(path, []byte(logs), 0o644); err == nil {
				t.Logf("all compose logs: %s", path)
			}
			tail, _ := s.try(cctx, append([]string{"logs", "--no-color", "--tail=30"}, latchkeyServices...)...)
			t.Logf("latchkey services, last lines:\n%s", tail)
		}
		if out, err := s.try(cctx, "down", "-v", "--remove-orphans", "--timeout", "5"); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
	})

	// NATS first (the one-shot secrets service runs before it), and wait
	// for JetStream to elect its meta leader: a service asking JetStream
	// for its bucket before that waits out its whole start timeout (60 s)
	// before its restart tries again.
	upStart := time.Now()
	s.run(ctx, t, "up", "-d", "--no-build", "--wait", "--wait-timeout", "120", "nats-1", "nats-2", "nats-3")
	s.urls = fmt.Sprintf("nats://127.0.0.1:%d,nats://127.0.0.1:%d,nats://127.0.0.1:%d",
		s.ports["LATCHKEY_NATS_PORT_1"], s.ports["LATCHKEY_NATS_PORT_2"], s.ports["LATCHKEY_NATS_PORT_3"])
	s.creds = map[string]credentials{}
	for _, u := range []string{"client", "admin", "ops"} {
		s.creds[u] = s.secret(ctx, t, u)
	}
	ops := s.connect(t, "ops")
	js, err := jetstream.New(ops.nc)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "JetStream cluster ready", 90*time.Second, func(ctx context.Context) error {
		_, err := js.AccountInfo(ctx)
		return err
	})
	t.Logf("NATS cluster up after %s", time.Since(upStart).Round(time.Second))

	// Then everything, until every healthcheck passes: each service's
	// `healthcheck` subcommand gets its own instance's micro ping answer.
	s.run(ctx, t, "up", "-d", "--no-build", "--wait", "--wait-timeout", "180")
	t.Logf("every service healthy %s after `up`", time.Since(upStart).Round(time.Second))
	cl := s.connect(t, "client")
	c := client.New(cl.nc, client.WithTimeout(3*time.Second))
	waitFor(ctx, t, "first put and get through the router", 60*time.Second, func(ctx context.Context) error {
		if _, err := c.Put(ctx, "deploy:ready", []byte("1")); err != nil {
			return err
		}
		_, err := c.Get(ctx, "deploy:ready")
		return err
	})
	t.Logf("suite serving after %s", time.Since(start).Round(time.Second))

	t.Run("anonymous and wrong passwords refused", func(t *testing.T) { refused(t, s) })
	t.Run("client permissions", func(t *testing.T) { clientBoundaries(ctx, t, s, cl, c) })
	t.Run("admin and ops permissions", func(t *testing.T) { adminOpsBoundaries(ctx, t, s, ops, js) })
	t.Run("micro discovery through the client user", func(t *testing.T) { discovery(t, cl.nc) })
	if t.Failed() {
		return
	}

	written := map[string]string{} // every acknowledged write, by key
	t.Run("smoke", func(t *testing.T) { smoke(ctx, t, c, written) })
	if t.Failed() {
		return
	}
	t.Run("watch through the client user", func(t *testing.T) { watch(ctx, t, c) })
	t.Run("latchkey check at TTL instants and fence bounds", func(t *testing.T) { edgeCheck(ctx, t, s) })
	t.Run("latchkey check with the compose injector", func(t *testing.T) { composeFaultCheck(ctx, t, s) })
	if slices.Contains(profiles, "prometheus") {
		t.Run("prometheus scrapes every service", func(t *testing.T) {
			prometheusTargets(ctx, t, s.ports["LATCHKEY_PROMETHEUS_PORT"])
		})
	}
	if slices.Contains(profiles, "jaeger") {
		t.Run("jaeger receives traces", func(t *testing.T) {
			jaegerServices(ctx, t, s.ports["LATCHKEY_JAEGER_UI_PORT"])
		})
	}

	ok := t.Run("router-1 and locker-1 killed mid-traffic", func(t *testing.T) {
		statelessKill(ctx, t, s, cl.nc, c, written)
	})
	if !ok {
		return
	}

	t.Run("storage-a killed", func(t *testing.T) {
		w := startWriter(ctx, t, c, "load-storage-a")
		w.waitAcks(t, 20)
		s.run(ctx, t, "kill", "storage-a")
		w.waitAcks(t, 20)
		w.finish(t, written)
		retries := traffic(ctx, t, c, "after-storage-a", written)
		t.Logf("served by storage-b alone; %d retried requests", retries)
		verify(ctx, t, c, written)
	})

	ok = t.Run("NATS leader of shard 0 killed", func(t *testing.T) {
		stream := "KV_" + subjects.New("").ShardBucket("0")
		info, err := streamInfo(ctx, js, stream)
		if err != nil {
			t.Fatalf("stream info %s: %v", stream, err)
		}
		leader := info.Cluster.Leader // the server name is the compose service name
		if !strings.HasPrefix(leader, "nats-") {
			t.Fatalf("stream %s leader %q is not one of nats-1..3", stream, leader)
		}
		w := startWriter(ctx, t, c, "load-"+leader)
		w.waitAcks(t, 20)
		s.run(ctx, t, "kill", leader)
		t.Logf("killed %s, leader of %s", leader, stream)
		defer func() {
			if out, err := s.try(ctx, "start", leader, "storage-a"); err != nil {
				t.Errorf("restart %s and storage-a: %v\n%s", leader, err, out)
			}
		}()
		w.waitAcks(t, 20)
		w.finish(t, written)
		retries := traffic(ctx, t, c, "after-"+leader, written)
		t.Logf("%d retried requests during fail-over", retries)
		verify(ctx, t, c, written)
	})
	if !ok {
		return // storage-a may not be back: the next step would only fail for that
	}

	if slices.Contains(profiles, "prometheus") {
		t.Run("every dashboard query against the deployment's Prometheus", func(t *testing.T) {
			panelQueries(ctx, t, s.ports["LATCHKEY_PROMETHEUS_PORT"])
		})
	}
	t.Run("shards grow 3 -> 4 online, driven as admin", func(t *testing.T) { reshardOnline(ctx, t, s, c, written) })
	// Before TLS re-creates the NATS containers and their logs.
	t.Run("no permission violation by a service", func(t *testing.T) { serviceViolations(ctx, t, s) })

	ok = t.Run("storage-b killed after storage-a restarted", func(t *testing.T) {
		// storage-a came back: it alone must now serve every shard.
		s.run(ctx, t, "kill", "storage-b")
		retries := traffic(ctx, t, c, "after-storage-b", written)
		t.Logf("served by restarted storage-a; %d retried requests", retries)
		verify(ctx, t, c, written)
	})
	if !ok {
		return
	}

	t.Run("TLS turned on over the same data", func(t *testing.T) {
		tlsOn(ctx, t, s, written)
	})
	t.Run("no permission violation by a service, with TLS", func(t *testing.T) { serviceViolations(ctx, t, s) })
	t.Logf("deployment test done in %s", time.Since(start).Round(time.Second))
}

// smoke: put, get, CAS, scan, and a lock with fenced writes.
func smoke(ctx context.Context, t *testing.T, c *client.Client, written map[string]string) {
	for i := range 10 {
		k, v := fmt.Sprintf("smoke:%02d", i), fmt.Sprintf("v%d", i)
		if _, err := c.Put(ctx, k, []byte(v)); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		written[k] = v
	}
	e, err := c.Get(ctx, "smoke:03")
	if err != nil || string(e.Value) != "v3" {
		t.Fatalf("get smoke:03 = %v, %v; want v3", e, err)
	}
	if _, err := c.Put(ctx, "smoke:03", []byte("x"), client.IfRevision(e.Revision+1000)); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("put with a wrong revision: %v, want a conflict", err)
	}
	if _, err := c.Put(ctx, "smoke:03", []byte("v3b"), client.IfRevision(e.Revision)); err != nil {
		t.Fatalf("put with the right revision: %v", err)
	}
	written["smoke:03"] = "v3b"
	var keys []string
	for entry, err := range c.ScanAll(ctx, "smoke:") {
		if err != nil {
			t.Fatalf("scan: %v", err)
		}
		keys = append(keys, entry.Key)
	}
	if len(keys) != 10 || keys[0] != "smoke:00" || keys[9] != "smoke:09" {
		t.Fatalf("scan smoke: = %v, want smoke:00..smoke:09 in order", keys)
	}

	l1, err := c.Acquire(ctx, "deploy-lock", client.WithOwner("first"), client.WithLeaseTTL(5*time.Second))
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	if _, err := c.Put(ctx, "fenced", []byte("first"), client.WithFence("deploy-lock", l1.Token())); err != nil {
		t.Fatalf("fenced put: %v", err)
	}
	if err := l1.Release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	l2, err := c.Acquire(ctx, "deploy-lock", client.WithOwner("second"), client.WithLeaseTTL(5*time.Second))
	if err != nil {
		t.Fatalf("second acquire: %v", err)
	}
	defer l2.Release(ctx)
	if l2.Token() <= l1.Token() {
		t.Fatalf("token %d after %d: tokens must increase", l2.Token(), l1.Token())
	}
	if _, err := c.Put(ctx, "fenced", []byte("second"), client.WithFence("deploy-lock", l2.Token())); err != nil {
		t.Fatalf("fenced put with the new token: %v", err)
	}
	written["fenced"] = "second"
	if _, err := c.Put(ctx, "fenced", []byte("stale"), client.WithFence("deploy-lock", l1.Token())); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("fenced put with the old token: %v, want a stale-fence conflict", err)
	}
}

// traffic writes 20 keys and takes and uses a lock while a fault is in
// force, retrying 503s (bounded); it returns how many requests it retried.
func traffic(ctx context.Context, t *testing.T, c *client.Client, tag string, written map[string]string) int {
	t.Helper()
	retries := 0
	for i := range 20 {
		k, v := fmt.Sprintf("%s:%02d", tag, i), tag+strconv.Itoa(i)
		retries += retry(ctx, t, "put "+k, func(ctx context.Context) error {
			_, err := c.Put(ctx, k, []byte(v))
			return err
		})
		written[k] = v
	}
	// An acquire that timed out may still have taken the lock: each try
	// takes a lock of its own name, so a retry never waits on its own lease.
	var l *client.Lock
	tries := 0
	retries += retry(ctx, t, "acquire", func(ctx context.Context) error {
		tries++
		var err error
		l, err = c.Acquire(ctx, fmt.Sprintf("deploy-%s-%d", tag, tries), client.WithLeaseTTL(10*time.Second), client.WithoutKeepAlive())
		return err
	})
	retries += retry(ctx, t, "fenced put", func(ctx context.Context) error {
		_, err := c.Put(ctx, "fenced-"+tag, []byte("ok"), client.WithFence(l.Name(), l.Token()))
		return err
	})
	written["fenced-"+tag] = "ok"
	retries += retry(ctx, t, "release", func(ctx context.Context) error { return l.Release(ctx) })
	return retries
}

// writer puts fresh keys in the background, so that requests are in
// flight when a fault strikes.
type writer struct {
	tag  string
	once sync.Once
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	acked   map[string]string
	unknown int   // 503s and timeouts: the write may or may not have happened
	last    error // the latest 503 or timeout
	err     error // any other answer
}

func startWriter(ctx context.Context, t *testing.T, c *client.Client, tag string) *writer {
	w := &writer{tag: tag, stop: make(chan struct{}), done: make(chan struct{}), acked: map[string]string{}}
	t.Cleanup(w.halt) // also when the test stops early
	go func() {
		defer close(w.done)
		for i := range 20000 { // bounded even if nobody stops it
			select {
			case <-w.stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
			k, v := fmt.Sprintf("%s:%05d", tag, i), strconv.Itoa(i)
			err := callTimeout(ctx, func(ctx context.Context) error {
				_, err := c.Put(ctx, k, []byte(v))
				return err
			})
			w.mu.Lock()
			switch {
			case err == nil:
				w.acked[k] = v
			case retryable(err):
				w.unknown++
				w.last = err
			default:
				w.err = fmt.Errorf("put %s: %w", k, err)
			}
			failed := w.err != nil
			w.mu.Unlock()
			if failed {
				return
			}
		}
	}()
	return w
}

// waitAcks waits (at most 30 s) until n more writes are acknowledged.
func (w *writer) waitAcks(t *testing.T, n int) {
	t.Helper()
	w.mu.Lock()
	want := len(w.acked) + n
	w.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w.mu.Lock()
		got, err, unknown, last := len(w.acked), w.err, w.unknown, w.last
		w.mu.Unlock()
		switch {
		case err != nil:
			t.Fatalf("background writer: %v", err)
		case got >= want:
			return
		case time.Now().After(deadline):
			t.Fatalf("background writer: %d of %d writes acknowledged within 30 s; %d unavailable, the last: %v", got, want, unknown, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// halt stops the writer and waits for it; calling it again does nothing.
func (w *writer) halt() {
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// finish stops the writer and adds its acknowledged writes to written.
func (w *writer) finish(t *testing.T, written map[string]string) {
	t.Helper()
	w.halt()
	if w.err != nil {
		t.Fatalf("background writer: %v", w.err)
	}
	for k, v := range w.acked {
		written[k] = v
	}
	t.Logf("background writer %s: %d writes acknowledged, %d unavailable (outcome unknown)", w.tag, len(w.acked), w.unknown)
}

// verify reads back every acknowledged write (linearizable gets) and
// checks that a scan sees them all.
func verify(ctx context.Context, t *testing.T, c *client.Client, written map[string]string) {
	t.Helper()
	for k, want := range written {
		var got string
		retry(ctx, t, "get "+k, func(ctx context.Context) error {
			e, err := c.Get(ctx, k)
			if err == nil {
				got = string(e.Value)
			}
			return err
		})
		if got != want {
			t.Errorf("get %s = %q, want %q (acknowledged write lost)", k, got, want)
		}
	}
	n := 0
	retry(ctx, t, "scan", func(ctx context.Context) error {
		n = 0
		for _, err := range c.ScanAll(ctx, "") {
			if err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if n < len(written) {
		t.Errorf("scan found %d keys, want at least the %d written", n, len(written))
	}
}

// retry calls op until it succeeds, retrying only "unavailable" answers
// (503, timeouts) for up to 30 s: the bound on fail-over the test accepts.
func retry(ctx context.Context, t *testing.T, what string, op func(context.Context) error) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for n := 0; ; n++ {
		err := callTimeout(ctx, op)
		if err == nil {
			return n
		}
		if !retryable(err) {
			t.Fatalf("%s: %v (not a retryable 503)", what, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still unavailable after %d tries: %v", what, n+1, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// callTimeout runs one request with its own deadline. The client applies
// its timeout only to a context without one, and a request in flight on a
// connection to a server that dies gets no answer at all (NATS delivers at
// most once): only the deadline ends the wait.
func callTimeout(ctx context.Context, op func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return op(ctx)
}

// retryable: a 503 or a timeout, whose write may or may not have happened.
func retryable(err error) bool {
	return errors.Is(err, client.ErrUnavailable) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
}

// waitFor polls op (each try bounded to 5 s) until it succeeds or within
// passes.
func waitFor(ctx context.Context, t *testing.T, what string, within time.Duration, op func(context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := op(octx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, within, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func streamInfo(ctx context.Context, js jetstream.JetStream, name string) (*jetstream.StreamInfo, error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := js.Stream(sctx, name)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(sctx)
	if err != nil {
		return nil, err
	}
	if info.Cluster == nil {
		return nil, fmt.Errorf("stream %s has no cluster info", name)
	}
	return info, nil
}

// prometheusTargets waits until Prometheus scrapes router, both storage
// instances and the locker successfully.
func prometheusTargets(ctx context.Context, t *testing.T, port int) {
	want := []string{"router-1:9101", "router-2:9101", "storage-a:9102", "storage-b:9102", "locker-1:9103", "locker-2:9103"}
	waitFor(ctx, t, "every latchkey target up in Prometheus", 90*time.Second, func(ctx context.Context) error {
		var resp struct {
			Data struct {
				ActiveTargets []struct {
					Labels    map[string]string `json:"labels"`
					ScrapeURL string            `json:"scrapeUrl"`
					Health    string            `json:"health"`
					LastError string            `json:"lastError"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		if err := getJSON(ctx, fmt.Sprintf("http://127.0.0.1:%d/api/v1/targets", port), &resp); err != nil {
			return err
		}
		up := map[string]string{}
		for _, tg := range resp.Data.ActiveTargets {
			up[tg.Labels["instance"]] = tg.Health + " " + tg.LastError
		}
		for _, w := range want {
			if !strings.HasPrefix(up[w], "up") {
				return fmt.Errorf("target %s: %q (all: %v)", w, up[w], up)
			}
		}
		return nil
	})
}

// jaegerServices waits until Jaeger lists the three services' traces.
func jaegerServices(ctx context.Context, t *testing.T, port int) {
	waitFor(ctx, t, "latchkey services in Jaeger", 60*time.Second, func(ctx context.Context) error {
		var resp struct {
			Data []string `json:"data"`
		}
		if err := getJSON(ctx, fmt.Sprintf("http://127.0.0.1:%d/api/services", port), &resp); err != nil {
			return err
		}
		for _, w := range []string{"latchkey-router", "latchkey-storage", "latchkey-locker"} {
			if !slices.Contains(resp.Data, w) {
				return fmt.Errorf("no %s among %v", w, resp.Data)
			}
		}
		return nil
	})
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func fileExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// serviceViolations fails on every permission violation the NATS servers
// logged for a service's user: the services need nothing their
// permissions do not grant, and all the violations logged are the ones
// this test provoked as client, admin and ops.
func serviceViolations(ctx context.Context, t *testing.T, s *stack) {
	logs := s.run(ctx, t, "logs", "--no-color", "nats-1", "nats-2", "nats-3")
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, "Violation") {
			continue
		}
		n++
		// A reply whose request arrived before the service's connection
		// moved to another server (the kills and the TLS switch) has lost
		// its allow_responses permission there: the reply is dropped and
		// the caller times out (a 503), which the kill tests allow for.
		// Such late replies to an _INBOX are not a missing permission.
		if strings.Contains(line, "Publish Violation") && strings.Contains(line, "Subject \"_INBOX.") {
			continue
		}
		for _, u := range []string{"user:router\"", "user:storage\"", "user:storage_events\"", "user:locker\""} {
			if strings.Contains(line, u) {
				t.Errorf("%s", line)
			}
		}
	}
	t.Logf("%d violations logged, none by a service's user", n)
}
