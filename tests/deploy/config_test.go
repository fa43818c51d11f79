package deploy_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// composeConfig is the part of `docker compose config --format json` the
// shape checks read.
type composeConfig struct {
	Services map[string]struct {
		Image       string            `json:"image"`
		Environment map[string]string `json:"environment"`
		Ports       []struct {
			HostIP    string `json:"host_ip"`
			Target    int    `json:"target"`
			Published string `json:"published"`
		} `json:"ports"`
		Healthcheck *struct {
			Test []string `json:"test"`
		} `json:"healthcheck"`
		DependsOn map[string]struct {
			Condition string `json:"condition"`
		} `json:"depends_on"`
		Volumes []struct {
			Type   string `json:"type"`
			Source string `json:"source"`
			Target string `json:"target"`
		} `json:"volumes"`
		ReadOnly bool     `json:"read_only"`
		CapDrop  []string `json:"cap_drop"`
		Profiles []string `json:"profiles"`
	} `json:"services"`
}

// TestComposeFiles checks the shape of the public compose.yaml (and with
// its TLS and offline overrides) as Compose v2 resolves it: only loopback
// ports and never the monitoring or cluster ports, 2 routers, 2 lockers,
// 2 storage instances serving every shard, R3, a healthcheck on every
// latchkey service and start order on health, passwords only as files,
// each secret volume only where its password is needed.
func TestComposeFiles(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := composeCommand(ctx); err != nil {
		skipOrFail(t, "%v", err)
	}
	dir := filepath.Join(repoRoot(t), "deploy", "compose")
	for _, files := range [][]string{{"compose.yaml"}, {"compose.yaml", "compose.tls.yaml"}, {"compose.yaml", "compose.offline.yaml"}} {
		t.Run(strings.Join(files, "+"), func(t *testing.T) {
			args := []string{"compose"}
			for _, f := range files {
				args = append(args, "-f", f)
			}
			cmd := exec.CommandContext(ctx, "docker", append(args, "config", "--format", "json")...)
			cmd.Dir = dir
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("docker compose config: %v", err)
			}
			var cfg composeConfig
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			checkShape(t, cfg, slices.Contains(files, "compose.tls.yaml"))
		})
	}
}

func checkShape(t *testing.T, cfg composeConfig, tls bool) {
	secretVolumes := map[string][]string{} // volume -> services mounting it
	for name, svc := range cfg.Services {
		for _, p := range svc.Ports {
			if p.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes %d on %q, want 127.0.0.1 only", name, p.Target, p.HostIP)
			}
			if p.Target == 8222 || p.Target == 6222 {
				t.Errorf("%s publishes the NATS %d port", name, p.Target)
			}
		}
		for k, v := range svc.Environment {
			if strings.Contains(k, "PASSWORD") && !strings.HasSuffix(k, "_FILE") && v != "" {
				t.Errorf("%s: %s is set in the environment; passwords come from files", name, k)
			}
		}
		for _, v := range svc.Volumes {
			if v.Type == "volume" && (v.Source == "secrets" || strings.HasSuffix(v.Source, "-secret") || v.Source == "nats-auth") {
				secretVolumes[v.Source] = append(secretVolumes[v.Source], name)
			}
		}
	}
	count := map[string]int{}
	for _, name := range latchkeyServices {
		svc, ok := cfg.Services[name]
		if !ok {
			t.Errorf("no service %s", name)
			continue
		}
		kind := strings.Split(name, "-")[0]
		count[kind]++
		if svc.Healthcheck == nil || !slices.Equal(svc.Healthcheck.Test, []string{"CMD", "/entrypoint", "healthcheck"}) {
			t.Errorf("%s: healthcheck %v, want the binary's healthcheck subcommand", name, svc.Healthcheck)
		}
		for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
			if svc.DependsOn[n].Condition != "service_healthy" {
				t.Errorf("%s: depends on %s with %q, want service_healthy", name, n, svc.DependsOn[n].Condition)
			}
		}
		env := svc.Environment
		if env["LATCHKEY_REPLICAS"] != "3" || env["LATCHKEY_NATS_USER"] != kind ||
			env["LATCHKEY_INBOX_PREFIX"] != "_INBOX."+kind || env["LATCHKEY_NATS_PASSWORD_FILE"] == "" {
			t.Errorf("%s: replicas %q, user %q, inbox %q, password file %q", name, env["LATCHKEY_REPLICAS"],
				env["LATCHKEY_NATS_USER"], env["LATCHKEY_INBOX_PREFIX"], env["LATCHKEY_NATS_PASSWORD_FILE"])
		}
		if kind == "storage" && env["LATCHKEY_SHARDS"] != "0,1,2" {
			t.Errorf("%s serves shards %q, want every shard (0,1,2)", name, env["LATCHKEY_SHARDS"])
		}
		if tls && (!strings.HasPrefix(env["LATCHKEY_NATS_URL"], "tls://") || env["LATCHKEY_NATS_CA"] == "") {
			t.Errorf("%s with TLS: url %q, CA %q", name, env["LATCHKEY_NATS_URL"], env["LATCHKEY_NATS_CA"])
		}
		if !svc.ReadOnly || !slices.Contains(svc.CapDrop, "ALL") {
			t.Errorf("%s: read_only %v, cap_drop %v", name, svc.ReadOnly, svc.CapDrop)
		}
	}
	if count["router"] != 2 || count["locker"] != 2 || count["storage"] != 2 {
		t.Errorf("instances %v, want 2 routers, 2 lockers, 2 storage", count)
	}
	for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
		if cfg.Services[n].DependsOn["secrets"].Condition != "service_completed_successfully" {
			t.Errorf("%s does not wait for the secrets", n)
		}
	}
	want := map[string][]string{
		"secrets":        {"secrets"},
		"nats-auth":      {"nats-1", "nats-2", "nats-3", "secrets"},
		"router-secret":  {"router-1", "router-2", "secrets"},
		"storage-secret": {"secrets", "storage-a", "storage-b"},
		"locker-secret":  {"locker-1", "locker-2", "secrets"},
	}
	for v, w := range want {
		got := secretVolumes[v]
		slices.Sort(got)
		if !slices.Equal(got, w) {
			t.Errorf("volume %s is mounted by %v, want %v", v, got, w)
		}
	}
}
