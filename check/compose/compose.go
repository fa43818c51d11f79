// Package compose injects faults into a running Docker Compose deployment
// of latchkey (deploy/compose) for latchkey check: docker kill, docker
// pause and docker network disconnect on the project's containers, each
// undone on heal (docker start, unpause, network connect). The checks are
// the engine's own (package check); this is only its check.Injector.
//
// Containers are found by their Compose labels: the NATS servers are the
// services named nats-*, the latchkey services router-*, storage-* and
// locker-*. Everything else (the one-shot secrets service, Prometheus,
// Jaeger, Grafana) is left alone.
package compose

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/latchkey/latchkey/check"
)

// Fault kinds.
const (
	// KillNATS is docker kill of a NATS server container; docker start
	// on heal. Its data volume survives, as a SIGKILL leaves the disk.
	KillNATS = "docker-kill-nats"
	// PauseNATS freezes a NATS server (docker pause, the cgroup freezer:
	// SIGSTOP for every process of the container) for 2-15 s, longer than
	// an election.
	PauseNATS = "docker-pause-nats"
	// DisconnectNATS takes a NATS server off every network of the project
	// for 3-12 s: its routes and its clients (the published port too) are
	// cut, and the majority elects without it. It is reconnected with its
	// service name as alias, so the others find it again.
	DisconnectNATS = "docker-disconnect-nats"
	// KillService is docker kill of a latchkey service container (router,
	// storage, locker); docker start on heal.
	KillService = "docker-kill-service"
	// PauseService freezes a latchkey service container for 2-15 s.
	PauseService = "docker-pause-service"
)

// AllFaultKinds names every kind, for flags.
var AllFaultKinds = []string{KillNATS, PauseNATS, DisconnectNATS, KillService, PauseService}

// Options configure an Injector.
type Options struct {
	// Project is the Compose project name (docker compose -p).
	Project string
	// Docker is the docker command; default "docker".
	Docker string
	// Kinds restricts the faults to these kinds; empty means all.
	Kinds []string
	// Log, when set, gets one line per docker command run.
	Log io.Writer
}

// container is one container of the project.
type container struct {
	name, service string
	networks      []string
}

// Injector is a check.Injector for one Compose project.
type Injector struct {
	o        Options
	nats     []container // sorted by service
	services []container
}

// New finds the project's containers. It fails when the project has no
// NATS server or no latchkey service container.
func New(ctx context.Context, o Options) (*Injector, error) {
	if o.Project == "" {
		return nil, errors.New("compose: a project name is required")
	}
	if o.Docker == "" {
		o.Docker = "docker"
	}
	for _, k := range o.Kinds {
		if !slices.Contains(AllFaultKinds, k) {
			return nil, fmt.Errorf("compose: no fault kind %q (want %s)", k, strings.Join(AllFaultKinds, ", "))
		}
	}
	in := &Injector{o: o}
	out, err := in.docker(ctx, "ps", "-a", "--filter", "label=com.docker.compose.project="+o.Project,
		"--format", `{{.Names}}	{{.Label "com.docker.compose.service"}}	{{.Networks}}`)
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			continue
		}
		c := container{name: f[0], service: f[1], networks: strings.Split(f[2], ",")}
		switch {
		case strings.HasPrefix(c.service, "nats-"):
			in.nats = append(in.nats, c)
		case strings.HasPrefix(c.service, "router-"), strings.HasPrefix(c.service, "storage-"), strings.HasPrefix(c.service, "locker-"):
			in.services = append(in.services, c)
		}
	}
	bySvc := func(a, b container) int { return strings.Compare(a.service, b.service) }
	slices.SortFunc(in.nats, bySvc)
	slices.SortFunc(in.services, bySvc)
	if len(in.nats) == 0 || len(in.services) == 0 {
		return nil, fmt.Errorf("compose: project %q has %d NATS and %d latchkey service containers; is it up?", o.Project, len(in.nats), len(in.services))
	}
	return in, nil
}

// Faults lists one fault per kind and container.
func (in *Injector) Faults() []check.Fault {
	var fs []check.Fault
	add := func(kind string, n int, minHold, maxHold time.Duration) {
		if len(in.o.Kinds) > 0 && !slices.Contains(in.o.Kinds, kind) {
			return
		}
		for i := range n {
			fs = append(fs, check.Fault{Kind: kind, Target: i, MinHold: minHold, MaxHold: maxHold})
		}
	}
	add(KillNATS, len(in.nats), 0, 0)
	add(PauseNATS, len(in.nats), 2*time.Second, 15*time.Second)
	add(DisconnectNATS, len(in.nats), 3*time.Second, 12*time.Second)
	add(KillService, len(in.services), 0, 0)
	add(PauseService, len(in.services), 2*time.Second, 15*time.Second)
	return fs
}

// Describe names the container a fault hits, for logs and reports.
func (in *Injector) Describe(f check.Fault) string {
	c, err := in.target(f)
	if err != nil {
		return f.String()
	}
	return f.Kind + " " + c.service
}

func (in *Injector) target(f check.Fault) (container, error) {
	list := in.services
	if strings.HasSuffix(f.Kind, "-nats") {
		list = in.nats
	}
	if f.Target < 0 || f.Target >= len(list) {
		return container{}, fmt.Errorf("compose: fault %s: no such container", f)
	}
	return list[f.Target], nil
}

// Inject causes f.
func (in *Injector) Inject(ctx context.Context, f check.Fault) error {
	c, err := in.target(f)
	if err != nil {
		return err
	}
	switch f.Kind {
	case KillNATS, KillService:
		_, err = in.docker(ctx, "kill", c.name)
	case PauseNATS, PauseService:
		_, err = in.docker(ctx, "pause", c.name)
	case DisconnectNATS:
		for _, n := range c.networks {
			if _, err = in.docker(ctx, "network", "disconnect", "--force", n, c.name); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("compose: unknown fault kind %q", f.Kind)
	}
	return err
}

// Heal undoes f.
func (in *Injector) Heal(ctx context.Context, f check.Fault) error {
	c, err := in.target(f)
	if err != nil {
		return err
	}
	switch f.Kind {
	case KillNATS, KillService:
		// A restart policy may have started it already; start is then a
		// no-op.
		_, err = in.docker(ctx, "start", c.name)
	case PauseNATS, PauseService:
		_, err = in.docker(ctx, "unpause", c.name)
	case DisconnectNATS:
		for _, n := range c.networks {
			if _, err = in.docker(ctx, "network", "connect", "--alias", c.service, n, c.name); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("compose: unknown fault kind %q", f.Kind)
	}
	return err
}

// Close heals whatever a cancelled run may have left: every container
// unpaused, connected and started. Errors are reported, not returned,
// since most of these are no-ops.
func (in *Injector) Close(ctx context.Context) {
	quiet := *in
	quiet.o.Log = nil
	in = &quiet
	for _, c := range append(slices.Clone(in.nats), in.services...) {
		_, _ = in.docker(ctx, "unpause", c.name)
		if strings.HasPrefix(c.service, "nats-") {
			for _, n := range c.networks {
				_, _ = in.docker(ctx, "network", "connect", "--alias", c.service, n, c.name)
			}
		}
		_, _ = in.docker(ctx, "start", c.name)
	}
}

func (in *Injector) docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, in.o.Docker, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if in.o.Log != nil && args[0] != "ps" {
		fmt.Fprintf(in.o.Log, "%s %s\n", in.o.Docker, strings.Join(args, " "))
	}
	if err != nil {
		return out.String(), fmt.Errorf("compose: %s %s: %v: %s", in.o.Docker, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}
