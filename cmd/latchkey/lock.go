package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/nats-io/nats.go"
)

const lockUsage = `Usage: latchkey lock <subcommand> ...

  lock acquire NAME [--owner O] [--ttl 10s] [--wait 0s] [--json]
      take the lock once and print its fencing token; the lease is NOT
      renewed: renew it with 'lock renew' or let it expire
  lock renew NAME TOKEN [--ttl D]     extend the lease (default: same TTL)
  lock release NAME TOKEN             release the lease
  lock get NAME [--json]              show the holder, token and remaining lease
  lock run NAME [--owner O] [--ttl 10s] [--wait 0s] -- CMD [ARGS...]
      hold the lock (renewed automatically) while CMD runs; CMD gets
      LATCHKEY_LOCK_NAME and LATCHKEY_FENCE_TOKEN in its environment, is
      sent SIGTERM if the lease is lost, and the lock is released when CMD
      ends. Exits with CMD's exit code (4 if the lease was lost).

Run 'latchkey lock <subcommand> -h' for its flags.
`

// lockCmd dispatches `latchkey lock <subcommand>`.
func lockCmd(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, lockUsage)
		return usagef("lock needs a subcommand: acquire, renew, release, get or run")
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "-h", "--help", "help":
		fmt.Fprint(os.Stdout, lockUsage)
		return errHelp
	case "acquire":
		return lockAcquireCmd(ctx, rest)
	case "renew":
		return lockRenewCmd(ctx, rest)
	case "release":
		return lockReleaseCmd(ctx, rest)
	case "get":
		return lockGetCmd(ctx, rest)
	case "run":
		return lockRunCmd(ctx, rest)
	}
	return usagef("unknown lock subcommand %q; want acquire, renew, release, get or run", sub)
}

// leaseFlags are the flags of acquire and run.
type leaseFlags struct {
	owner string
	ttl   time.Duration
	wait  time.Duration
}

func (lf *leaseFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&lf.owner, "owner", "", "holder name shown by 'lock get' (default HOSTNAME/PID)")
	fs.DurationVar(&lf.ttl, "ttl", client.DefaultLeaseTTL, "lease length (at least 1s; rounded up to whole seconds)")
	fs.DurationVar(&lf.wait, "wait", 0, "wait up to this long for a held lock (at most 5m; 0 tries once)")
}

func (lf *leaseFlags) options() []client.LockOption {
	opts := []client.LockOption{client.WithLeaseTTL(lf.ttl), client.WithWait(lf.wait)}
	if lf.owner != "" {
		opts = append(opts, client.WithOwner(lf.owner))
	}
	return opts
}

func parseToken(s string) (uint64, error) {
	t, err := strconv.ParseUint(s, 10, 64)
	if err != nil || t == 0 {
		return 0, usagef("TOKEN must be a positive integer (as printed by 'lock acquire'), got %q", s)
	}
	return t, nil
}

func lockAcquireCmd(ctx context.Context, args []string) error {
	fs := newFlags("lock acquire", "lock acquire NAME [--owner O] [--ttl 10s] [--wait 0s] [--json]\n\nPrints the fencing token. The lease is not renewed by this command.")
	var lf leaseFlags
	lf.register(fs)
	asJSON := fs.Bool("json", false, `print {"name","token","ttl_ms"} as one JSON line`)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, "NAME"); err != nil {
		return err
	}
	c, done, err := dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	l, err := c.Acquire(ctx, pos[0], append(lf.options(), client.WithoutKeepAlive())...)
	if err != nil {
		return err
	}
	ttl := time.Until(l.Expires()).Round(time.Second)
	if *asJSON {
		return printJSON(struct {
			Name  string `json:"name"`
			Token uint64 `json:"token,string"`
			TTLMs int64  `json:"ttl_ms"`
		}{l.Name(), l.Token(), ttl.Milliseconds()})
	}
	fmt.Println(l.Token())
	return nil
}

func lockRenewCmd(ctx context.Context, args []string) error {
	fs := newFlags("lock renew", "lock renew NAME TOKEN [--ttl D]")
	ttl := fs.Duration("ttl", 0, "new lease length (0 keeps the current one)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, "NAME", "TOKEN"); err != nil {
		return err
	}
	token, err := parseToken(pos[1])
	if err != nil {
		return err
	}
	c, done, err := dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	granted, err := c.Renew(ctx, pos[0], token, *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "renewed for %s\n", granted)
	return nil
}

func lockReleaseCmd(ctx context.Context, args []string) error {
	fs := newFlags("lock release", "lock release NAME TOKEN")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, "NAME", "TOKEN"); err != nil {
		return err
	}
	token, err := parseToken(pos[1])
	if err != nil {
		return err
	}
	c, done, err := dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	return c.ReleaseLock(ctx, pos[0], token)
}

func lockGetCmd(ctx context.Context, args []string) error {
	fs := newFlags("lock get", "lock get NAME [--json]")
	asJSON := fs.Bool("json", false, `print {"name","held","owner","token","ttl_remaining_ms"} as one JSON line`)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, "NAME"); err != nil {
		return err
	}
	c, done, err := dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	st, err := c.LockInfo(ctx, pos[0])
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(struct {
			Name           string `json:"name"`
			Held           bool   `json:"held"`
			Owner          string `json:"owner,omitempty"`
			Token          uint64 `json:"token,omitempty,string"`
			TTLRemainingMs int64  `json:"ttl_remaining_ms,omitempty"`
		}{st.Name, st.Held, st.Owner, st.Token, st.TTLRemaining.Milliseconds()})
	}
	if !st.Held {
		fmt.Println("not held")
		return nil
	}
	fmt.Printf("held by %s, token %d, %s left\n", st.Owner, st.Token, st.TTLRemaining.Round(time.Millisecond))
	return nil
}

// termGrace is how long a command gets after SIGTERM before SIGKILL.
const termGrace = 10 * time.Second

func lockRunCmd(ctx context.Context, args []string) error {
	fs := newFlags("lock run", "lock run NAME [--owner O] [--ttl 10s] [--wait 0s] -- CMD [ARGS...]")
	var lf leaseFlags
	lf.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return usagef("want NAME -- CMD [ARGS...]; see `latchkey help lock`")
	}
	name, argv := pos[0], pos[1:]
	// A long-lived connection: keep-alive must survive a NATS reconnect.
	nc, err := nats.Connect(global.server, connectOptions("latchkey-cli-lock-run", nats.MaxReconnects(-1))...)
	if err != nil {
		return &unreachableError{server: global.server, err: err}
	}
	defer nc.Close()
	c := client.New(nc, client.WithPrefix(global.prefix), client.WithTimeout(global.timeout))
	l, err := c.Acquire(ctx, name, lf.options()...)
	if err != nil {
		return err
	}
	release := func() {
		rctx, cancel := context.WithTimeout(context.Background(), global.timeout)
		defer cancel()
		if err := l.Release(rctx); err != nil {
			fmt.Fprintf(os.Stderr, "latchkey lock run: release: %v\n", err)
		}
	}

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(),
		"LATCHKEY_LOCK_NAME="+name,
		"LATCHKEY_FENCE_TOKEN="+strconv.FormatUint(l.Token(), 10))
	if err := cmd.Start(); err != nil {
		release()
		return fmt.Errorf("starting %s: %w", argv[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var lost error
	select {
	case err = <-exited:
	case <-l.Done():
		lost = l.Err()
		fmt.Fprintf(os.Stderr, "latchkey lock run: %v; stopping %s\n", lost, argv[0])
		err = terminate(cmd, exited)
	case <-ctx.Done():
		err = terminate(cmd, exited)
	}
	release()
	if lost != nil {
		return lost // exit code 4: ErrLockLost wraps the conflict when the locker refused
	}
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
		if code < 0 { // killed by a signal
			code = 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
		}
	case err != nil:
		return err
	}
	if code != 0 {
		// CMD's own exit code, not one of ours; nothing left to clean up.
		nc.Close()
		os.Exit(code)
	}
	return nil
}

// terminate sends SIGTERM, then SIGKILL after termGrace, and returns the
// command's exit.
func terminate(cmd *exec.Cmd, exited <-chan error) error {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		return err
	case <-time.After(termGrace):
		_ = cmd.Process.Kill()
		return <-exited
	}
}
