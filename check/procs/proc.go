package procs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// proc is one process of the deployment, started again with the same
// arguments after a kill. A supervised one (the services) is also
// restarted when it exits by itself, as a supervisor would: a service
// that finds JetStream electing at start-up exits, and comes back.
type proc struct {
	name, bin string
	args      []string
	log       string
	supervise bool

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	down    bool // killed by a fault or closing: not restarted until start
	closing bool
}

func (d *Deployment) newProc(name, bin string, args []string, supervise bool) *proc {
	return &proc{name: name, bin: bin, args: args, supervise: supervise,
		log: filepath.Join(d.o.Dir, "logs", name+".log")}
}

// start runs the process unless it runs already.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
	if p.closing || p.cmd != nil {
		return nil
	}
	return p.spawnLocked()
}

func (p *proc) spawnLocked() error {
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "---- %s start %s\n", time.Now().UTC().Format(time.RFC3339Nano), p.name)
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Own process group (a Ctrl-C of the checker is not theirs), and
	// killed with the checker if it dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", p.name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(f, "---- %s exit %s: %v\n", time.Now().UTC().Format(time.RFC3339Nano), p.name, err)
		f.Close()
		p.mu.Lock()
		p.cmd = nil
		close(exited)
		again := p.supervise && !p.down && !p.closing
		p.mu.Unlock()
		if again {
			time.Sleep(250 * time.Millisecond)
			p.mu.Lock()
			if !p.down && !p.closing && p.cmd == nil {
				_ = p.spawnLocked()
			}
			p.mu.Unlock()
		}
	}()
	return nil
}

// signal sends sig to the running process (an error if none runs).
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s is not running", p.name)
	}
	if sig == syscall.SIGKILL {
		p.down = true
	}
	return p.cmd.Process.Signal(sig)
}

// kill SIGKILLs the process (a stopped one too) and waits for its exit;
// it stays down until start.
func (p *proc) kill() error {
	p.mu.Lock()
	p.down = true
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s did not exit 10s after SIGKILL", p.name)
	}
}

func (p *proc) close() {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	_ = p.kill()
}
