package procs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrBuild wraps every failure to build nats-server or the services (no
// module cache and no network, no Go toolchain, not inside the clone), so
// callers can tell "cannot run here" from a broken deployment.
var ErrBuild = errors.New("procs: cannot build the binaries")

// NATSServerVersion is the nats-server module built for the process
// faults: the version the services are tested against (go.work).
const NATSServerVersion = "v2.15.2"

// cacheDir is where built tools live between runs, shared with
// scripts/build-jaeger.sh, outside any clone so fresh clones reuse them.
func cacheDir() (string, error) {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "latchkey", "bin"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".cache", "latchkey", "bin"), nil
}

// NATSServer returns the path of a nats-server binary of
// NATSServerVersion, building it from its Go module into the user cache
// the first time (about a minute on 2 cores), as the compose images build
// theirs. log hears what it does.
func NATSServer(ctx context.Context, log io.Writer) (string, error) {
	dir, err := cacheDir()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "nats-server-"+NATSServerVersion)
	if fi, err := os.Stat(out); err == nil && fi.Mode()&0o111 != 0 {
		fmt.Fprintf(log, "using nats-server %s at %s\n", NATSServerVersion, out)
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp("", "latchkey-nats-build")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	fmt.Fprintf(log, "building nats-server %s from its Go module into %s (first run only, about a minute)\n", NATSServerVersion, out)
	env := append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	steps := [][]string{
		{"go", "mod", "init", "latchkey-nats-build"},
		{"go", "get", "github.com/nats-io/nats-server/v2@" + NATSServerVersion},
		{"go", "build", "-trimpath", "-ldflags=-s -w", "-o", out + ".tmp", "github.com/nats-io/nats-server/v2"},
	}
	for _, args := range steps {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir, cmd.Env = work, env
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("%w: %s: %v\n%s", ErrBuild, strings.Join(args, " "), err, b)
		}
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		return "", err
	}
	return out, nil
}

// Service binaries, by the name the deployment gives their processes.
var servicePkgs = map[string]string{
	"storage": "github.com/latchkey/latchkey/services/storage/cmd/latchkey-storage",
	"router":  "github.com/latchkey/latchkey/services/router/cmd/latchkey-router",
	"locker":  "github.com/latchkey/latchkey/services/locker/cmd/latchkey-locker",
}

// BuildServices builds the three service binaries of this checkout into
// dir with `go build` and returns their paths by service name. It needs
// the latchkey workspace (run from inside the clone). When the working
// tree does not build (someone is half-way through an edit), it builds
// the last commit instead, from a `git archive` of HEAD, and says so.
func BuildServices(ctx context.Context, dir string, log io.Writer) (map[string]string, error) {
	gowork, err := exec.CommandContext(ctx, "go", "env", "GOWORK").Output()
	root := filepath.Dir(strings.TrimSpace(string(gowork)))
	if err != nil || strings.TrimSpace(string(gowork)) == "" || strings.TrimSpace(string(gowork)) == "off" {
		return nil, fmt.Errorf("%w: building the service binaries needs the latchkey checkout (go.work): run from inside it", ErrBuild)
	}
	fmt.Fprintf(log, "building latchkey-storage, latchkey-router and latchkey-locker from %s into %s\n", root, dir)
	out, err := goBuild(ctx, root, dir)
	if err == nil {
		return out, nil
	}
	first, _, _ := strings.Cut(err.Error(), "\n")
	fmt.Fprintf(log, "the working tree does not build (%s); building HEAD instead\n", first)
	snap, err2 := os.MkdirTemp("", "latchkey-head")
	if err2 != nil {
		return nil, errors.Join(err, err2)
	}
	defer os.RemoveAll(snap)
	archive := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive HEAD | tar -x -C "$2"`, "sh", root, snap)
	if b, err2 := archive.CombinedOutput(); err2 != nil {
		return nil, fmt.Errorf("%w: %w", ErrBuild, errors.Join(err, fmt.Errorf("git archive HEAD: %w\n%s", err2, b)))
	}
	out, err2 = goBuild(ctx, snap, dir)
	if err2 != nil {
		return nil, fmt.Errorf("%w: %w", ErrBuild, errors.Join(err, err2))
	}
	return out, nil
}

func goBuild(ctx context.Context, root, dir string) (map[string]string, error) {
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	out := map[string]string{}
	for name, pkg := range servicePkgs {
		args = append(args, pkg)
		out[name] = filepath.Join(dir, filepath.Base(pkg))
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK="+filepath.Join(root, "go.work"))
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build of the services: %w\n%s", err, b)
	}
	return out, nil
}
