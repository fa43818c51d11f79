// Package observability_test proves latchkey's telemetry end to end: spans
// across client, router, storage, JetStream and locker (in memory and in a
// real Jaeger), and every dashboard query against a real Prometheus
// scraping a running suite.
package observability_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/latchkey/latchkey/tests/suite"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// deployment is a suite of services on an embedded NATS server, with the
// process's metrics served on a loopback port.
type deployment struct {
	url     string
	nc      *nats.Conn
	suite   *suite.Suite
	metrics string // host:port of /metrics
}

func startSuite(t testing.TB) *deployment {
	t.Helper()
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	d := &deployment{url: srv.ClientURL(), nc: nc, suite: suite.New(t, nc, suite.Options{Shards: 3})}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	addr, err := telemetry.ServeMetrics(ctx, "127.0.0.1:0", slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	d.metrics = addr.String()
	return d
}

// inCI reports whether the tests run in CI, where a missing back-end
// binary is a failure: .ci/run installs Prometheus and builds Jaeger.
func inCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// needBinary returns the first executable among the candidates. A missing
// binary skips the test on a developer machine and fails it in CI.
func needBinary(t *testing.T, what, hint string, candidates ...string) string {
	t.Helper()
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return c
		}
	}
	msg := fmt.Sprintf("%s not found (looked for %q); %s", what, candidates, hint)
	if inCI() {
		t.Fatal(msg + " — CI must provide it (.ci/run)")
	}
	t.Skip(msg)
	return ""
}

// cacheBin is where scripts/build-jaeger.sh caches binaries.
func cacheBin() string {
	dir := os.Getenv("XDG_CACHE_HOME")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache")
	}
	return filepath.Join(dir, "latchkey", "bin")
}

// freePort returns a loopback port nobody listened on a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// runProcess starts a back-end process whose output goes to a log file in
// dir, and stops it (SIGTERM, then kill) when the test ends; its log is
// shown if the test failed.
func runProcess(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, filepath.Base(name)+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				if len(b) > 4000 {
					b = b[len(b)-4000:]
				}
				t.Logf("%s log (tail):\n%s", filepath.Base(name), b)
			}
		}
	})
}

// useTracing routes spans through tr for the rest of the test; the client
// (code that names no service) reports as latchkey-client.
func useTracing(t testing.TB, tr *telemetry.Tracing) {
	prev := otel.GetTracerProvider()
	telemetry.Use(tr, "latchkey-client")
	t.Cleanup(func() {
		telemetry.Use(nil, "")
		otel.SetTracerProvider(prev)
	})
}

// tracingOff is the state of a process with no exporter configured.
func tracingOff() {
	telemetry.Use(nil, "")
	otel.SetTracerProvider(noop.NewTracerProvider())
}

// clientSpan starts the caller's own span, the root of a test's trace.
func clientSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	return otel.Tracer("latchkey-tests").Start(ctx, name)
}
