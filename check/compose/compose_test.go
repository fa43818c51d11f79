package compose_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/compose"
)

// fakeDocker writes a docker stand-in that lists a project's containers
// the way `docker ps --format` does and appends every other command it is
// given to a log, and returns its path and the log's.
func fakeDocker(t *testing.T) (docker, log string) {
	dir := t.TempDir()
	log = filepath.Join(dir, "log")
	ps := strings.Join([]string{
		"p-nats-2-1\tnats-2\tp_default",
		"p-storage-a-1\tstorage-a\tp_default",
		"p-nats-1-1\tnats-1\tp_default,p_other",
		"p-secrets-1\tsecrets\tp_default",
		"p-router-1-1\trouter-1\tp_default",
		"p-prometheus-1\tprometheus\tp_default",
	}, "\n")
	script := "#!/bin/sh\nif [ \"$1\" = ps ]; then printf '" + strings.ReplaceAll(ps, "\t", "\\t") + "\\n'; exit 0; fi\necho \"$@\" >> " + log + "\n"
	docker = filepath.Join(dir, "docker")
	if err := os.WriteFile(docker, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return docker, log
}

// The injector finds the NATS and latchkey service containers by their
// Compose service, leaves the others alone, and runs the docker command
// of each fault and of its heal on the right container.
func TestInjectorDockerCommands(t *testing.T) {
	docker, log := fakeDocker(t)
	ctx := context.Background()
	in, err := compose.New(ctx, compose.Options{Project: "p", Docker: docker})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, f := range in.Faults() {
		kinds = append(kinds, f.String())
	}
	want := []string{"docker-kill-nats 0", "docker-kill-nats 1", "docker-pause-nats 0", "docker-pause-nats 1",
		"docker-disconnect-nats 0", "docker-disconnect-nats 1", "docker-kill-service 0", "docker-kill-service 1",
		"docker-pause-service 0", "docker-pause-service 1"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("faults %v, want %v", kinds, want)
	}
	for _, f := range []check.Fault{{Kind: compose.DisconnectNATS, Target: 0}, {Kind: compose.KillService, Target: 1}, {Kind: compose.PauseNATS, Target: 1}} {
		if err := in.Inject(ctx, f); err != nil {
			t.Fatal(err)
		}
		if err := in.Heal(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(log)
	wantLog := `network disconnect --force p_default p-nats-1-1
network disconnect --force p_other p-nats-1-1
network connect --alias nats-1 p_default p-nats-1-1
network connect --alias nats-1 p_other p-nats-1-1
kill p-storage-a-1
start p-storage-a-1
pause p-nats-2-1
unpause p-nats-2-1
`
	if string(got) != wantLog {
		t.Errorf("docker commands:\n%s\nwant:\n%s", got, wantLog)
	}
	if err := in.Inject(ctx, check.Fault{Kind: compose.KillService, Target: 2}); err == nil {
		t.Error("a fault on a container that does not exist was injected")
	}
}

// Bad options are refused with a clear error: no project, an unknown
// kind, a project without containers.
func TestInjectorRefusesBadOptions(t *testing.T) {
	docker, _ := fakeDocker(t)
	ctx := context.Background()
	for _, o := range []compose.Options{
		{Docker: docker},
		{Project: "p", Docker: docker, Kinds: []string{"docker-unplug"}},
	} {
		if _, err := compose.New(ctx, o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
	empty := filepath.Join(t.TempDir(), "docker")
	if err := os.WriteFile(empty, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := compose.New(ctx, compose.Options{Project: "gone", Docker: empty}); err == nil || !strings.Contains(err.Error(), "is it up") {
		t.Errorf("a project without containers: %v", err)
	}
}
