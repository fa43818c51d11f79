package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

var cliBuild struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// TestMain removes the CLI binary that the CLI tests build once.
func TestMain(m *testing.M) {
	code := m.Run()
	if cliBuild.dir != "" {
		os.RemoveAll(cliBuild.dir)
	}
	os.Exit(code)
}

// latchkeyBin builds cmd/latchkey once per test binary run.
func latchkeyBin(t *testing.T) string {
	t.Helper()
	cliBuild.once.Do(func() {
		cliBuild.dir, cliBuild.err = os.MkdirTemp("", "latchkey-cli-test")
		if cliBuild.err != nil {
			return
		}
		cliBuild.bin = filepath.Join(cliBuild.dir, "latchkey")
		cmd := exec.Command("go", "build", "-o", cliBuild.bin, ".")
		cmd.Dir = filepath.Join("..", "cmd", "latchkey")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			cliBuild.err = fmt.Errorf("go build cmd/latchkey: %v\n%s", err, out)
		}
	})
	if cliBuild.err != nil {
		t.Fatal(cliBuild.err)
	}
	return cliBuild.bin
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// devProcess is a running `latchkey dev`.
type devProcess struct {
	cmd    *exec.Cmd
	url    string
	stderr *lockedBuffer
	done   chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startDev runs `latchkey dev` on a free port and waits for its banner.
func startDev(t *testing.T, dataDir string) *devProcess {
	t.Helper()
	bin := latchkeyBin(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", freeTCPPort(t))
	cmd := exec.Command(bin, "dev", "--listen", strings.TrimPrefix(url, "nats://"), "--data", dataDir, "--shards", "3")
	cmd.Env = cliEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &devProcess{cmd: cmd, url: url, stderr: &lockedBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var banner strings.Builder
		for sc.Scan() {
			banner.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "Press Ctrl-C") {
				ready <- banner.String()
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	select {
	case banner := <-ready:
		if !strings.Contains(banner, "export NATS_URL="+url) {
			t.Fatalf("banner does not say how to connect to %s:\n%s", url, banner)
		}
		if !strings.Contains(banner, `nats req latchkey.kv.put '{"key":"user:42","value":"aGVsbG8="}'`) {
			t.Fatalf("banner lacks the nats req example:\n%s", banner)
		}
	case err := <-p.done:
		t.Fatalf("latchkey dev exited before it was ready: %v\n%s", err, p.stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("latchkey dev not ready after 60s:\n%s", p.stderr)
	}
	return p
}

// interrupt sends SIGINT and waits for a clean exit.
func (p *devProcess) interrupt(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("latchkey dev after SIGINT: %v\n%s", err, p.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("latchkey dev still running 30s after SIGINT:\n%s", p.stderr)
	}
	for _, step := range []string{"stopping locker", "stopping router", "stopping storage", "shutting NATS down", "stopped cleanly"} {
		if !strings.Contains(p.stderr.String(), step) {
			t.Fatalf("shutdown log lacks %q:\n%s", step, p.stderr)
		}
	}
}

// cliEnv is the environment without settings that would redirect the CLI.
func cliEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NATS_URL=") && !strings.HasPrefix(kv, "LATCHKEY_") {
			env = append(env, kv)
		}
	}
	return env
}

type cliResult struct {
	stdout, stderr string
	code           int
}

// cli runs one latchkey command with stdin and returns what it printed.
func cli(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(latchkeyBin(t), args...)
	cmd.Env = cliEnv()
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return cliResult{out.String(), errb.String(), code}
}

func TestCLIAgainstDev(t *testing.T) {
	data := t.TempDir()
	dev := startDev(t, data)
	srv := "--server=" + dev.url

	type step struct {
		name   string
		stdin  string
		args   []string
		code   int
		stdout string // exact, unless empty and check is set
		check  func(t *testing.T, r cliResult)
	}
	revOf := func(s string) uint64 {
		n, _ := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
		return n
	}
	var rev uint64
	steps := []step{
		{name: "put", args: []string{"put", "user:42", "hello", srv}, check: func(t *testing.T, r cliResult) {
			if rev = revOf(r.stdout); rev == 0 {
				t.Fatalf("put printed %q; want a revision", r.stdout)
			}
		}},
		{name: "get", args: []string{"get", srv, "user:42"}, stdout: "hello\n"},
		{name: "get --json", args: []string{"get", "user:42", "--json", srv}, check: func(t *testing.T, r cliResult) {
			var e struct {
				Key      string
				Value    []byte
				Revision uint64
			}
			if err := json.Unmarshal([]byte(r.stdout), &e); err != nil || e.Key != "user:42" || string(e.Value) != "hello" || e.Revision != rev {
				t.Fatalf("get --json printed %q (%v)", r.stdout, err)
			}
		}},
		{name: "get --verbose --stale", args: []string{"get", "user:42", "--verbose", "--stale", srv}, stdout: "hello\n", check: func(t *testing.T, r cliResult) {
			if !strings.Contains(r.stderr, "revision ") {
				t.Fatalf("--verbose stderr = %q", r.stderr)
			}
		}},
		{name: "get missing", args: []string{"get", "nobody", srv}, code: 3, check: wantStderr("not found")},
		{name: "put --if-absent on existing", args: []string{"put", "user:42", "x", "--if-absent", srv}, code: 4, check: wantStderr("")},
		{name: "put --if-revision stale", args: []string{"put", "user:42", "x", "--if-revision", "999999", srv}, code: 4},
		{name: "put from stdin with CAS", stdin: "line1\nline2", args: []string{"put", "user:42", "-", srv}, check: func(t *testing.T, r cliResult) {
			if revOf(r.stdout) <= rev {
				t.Fatalf("put printed %q; want a revision above %d", r.stdout, rev)
			}
		}},
		{name: "get multi-line value", args: []string{"get", "user:42", srv}, stdout: "line1\nline2\n"},
		{name: "put awkward key", args: []string{"put", "user:a b.*>", "v2", srv}},
		{name: "put with ttl", args: []string{"put", "user:tmp", "t", "--ttl", "1m", srv}},
		{name: "put ttl too short", args: []string{"put", "k", "v", "--ttl", "999ms", srv}, code: 1, check: wantStderr("1000")},
		{name: "scan", args: []string{"scan", "user:", srv}, stdout: "user:42\t\"line1\\nline2\"\nuser:a b.*>\tv2\nuser:tmp\tt\n"},
		{name: "scan one page", args: []string{"scan", "user:", "--limit", "1", srv}, stdout: "user:42\t\"line1\\nline2\"\n", check: wantStderr("--after")},
		{name: "scan --all --json", args: []string{"scan", "user:", "--all", "--limit", "1", "--json", srv}, check: func(t *testing.T, r cliResult) {
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			if len(lines) != 3 || !strings.Contains(lines[1], `"key":"user:a b.*>"`) {
				t.Fatalf("scan --all --json printed:\n%s", r.stdout)
			}
		}},
		{name: "scan --after", args: []string{"scan", "user:", "--after", "user:42", srv}, stdout: "user:a b.*>\tv2\nuser:tmp\tt\n"},
		{name: "del", args: []string{"del", "user:a b.*>", srv}, check: func(t *testing.T, r cliResult) {
			if !strings.HasPrefix(r.stdout, "deleted ") {
				t.Fatalf("del printed %q", r.stdout)
			}
		}},
		{name: "del again", args: []string{"del", "user:a b.*>", srv}, stdout: "absent\n"},
		{name: "del --if-revision stale", args: []string{"del", "user:42", "--if-revision", "1", srv}, code: 4},
		{name: "fence flags go together", args: []string{"put", "k", "v", "--fence-lock", "L", srv}, code: 2},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2},
		{name: "missing argument", args: []string{"get", srv}, code: 2},
		{name: "bad flag", args: []string{"get", "k", "--nope", srv}, code: 2},
		{name: "no server", args: []string{"get", "k", "--server", "nats://127.0.0.1:1"}, code: 5, check: wantStderr("cannot connect")},
		{name: "help", args: []string{"help"}, check: func(t *testing.T, r cliResult) {
			for _, s := range []string{"dev", "get", "put", "del", "scan", "Exit codes", "3  not found", "4  conflict"} {
				if !strings.Contains(r.stdout, s) {
					t.Fatalf("help lacks %q:\n%s", s, r.stdout)
				}
			}
		}},
		{name: "help put", args: []string{"help", "put"}, check: wantStderr("if-revision")},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			r := cli(t, s.stdin, s.args...)
			if r.code != s.code {
				t.Fatalf("exit code %d; want %d\nstdout: %s\nstderr: %s", r.code, s.code, r.stdout, r.stderr)
			}
			if s.stdout != "" && r.stdout != s.stdout {
				t.Fatalf("stdout = %q; want %q", r.stdout, s.stdout)
			}
			if s.code != 0 && strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
				t.Fatalf("error is not one line:\n%s", r.stderr)
			}
			if s.check != nil {
				s.check(t, r)
			}
		})
		if !ok {
			t.FailNow() // later steps build on earlier ones
		}
	}

	// `nats micro ls` would list all three services of the dev deployment.
	nc, err := nats.Connect(dev.url)
	if err != nil {
		t.Fatal(err)
	}
	expectServices(t, nc, "latchkey-router", "latchkey-storage", "latchkey-locker")
	nc.Close()

	dev.interrupt(t)

	// Data survives a restart on the same directory.
	dev = startDev(t, data)
	if r := cli(t, "", "get", "user:42", "--server", dev.url); r.code != 0 || r.stdout != "line1\nline2\n" {
		t.Fatalf("after restart: get = %d %q %q", r.code, r.stdout, r.stderr)
	}
	dev.interrupt(t)
}

func wantStderr(s string) func(t *testing.T, r cliResult) {
	return func(t *testing.T, r cliResult) {
		t.Helper()
		if r.stderr == "" || !strings.Contains(r.stderr, s) {
			t.Fatalf("stderr = %q; want an error mentioning %q", r.stderr, s)
		}
	}
}
