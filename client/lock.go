package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

// DefaultLeaseTTL is the lease length of Acquire without WithLeaseTTL.
const DefaultLeaseTTL = 10 * time.Second

// ErrLockLost is what Lock.Err matches once a held lock is gone: its
// renewal was refused (released elsewhere, expired, taken over) or the
// lease ran out while the locker could not be reached. Whoever holds the
// lock now has a higher token.
var ErrLockLost = errors.New("latchkey: lock lost")

// ErrLockReleased is what Lock.Err returns after Release.
var ErrLockReleased = errors.New("latchkey: lock released")

type lockOptions struct {
	owner     string
	ttl       time.Duration
	wait      time.Duration
	keepAlive bool
}

// LockOption configures Acquire.
type LockOption func(*lockOptions)

// WithOwner names the holder, as lock.get and `latchkey lock get` show it.
// The default is "<hostname>/<pid>".
func WithOwner(owner string) LockOption { return func(o *lockOptions) { o.owner = owner } }

// WithLeaseTTL sets the lease length (at least one second; the locker
// rounds it up to whole seconds). If the holder stops renewing, for
// example because it crashed, the lock frees this long after the last
// renewal. Default DefaultLeaseTTL.
func WithLeaseTTL(d time.Duration) LockOption { return func(o *lockOptions) { o.ttl = d } }

// WithWait makes Acquire wait up to d for a held lock to free (the locker
// is notified of releases and expiries; it does not poll). 0, the
// default, tries once. The locker allows at most five minutes.
func WithWait(d time.Duration) LockOption { return func(o *lockOptions) { o.wait = d } }

// WithoutKeepAlive turns off automatic renewal: the lease then ends after
// its TTL unless renewed with Client.Renew. For handing the token to
// another process (the CLI's `lock acquire` does this).
func WithoutKeepAlive() LockOption { return func(o *lockOptions) { o.keepAlive = false } }

func defaultOwner() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "unknown"
	}
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

// Lock is a held lock. Unless WithoutKeepAlive was given it renews its
// lease in the background at about a third of the TTL; Done is closed when
// the lease is lost or released, and at Expires at the latest. Pass Token to writes with WithFence, so
// a write made after the lease was lost (a long GC pause, a partition) is
// refused once a newer holder has written.
type Lock struct {
	c     *Client
	name  string
	owner string
	token uint64

	mu      sync.Mutex
	ttl     time.Duration
	expires time.Time   // conservative: measured from before the request that granted it
	expiry  *time.Timer // closes done at expires; re-armed by every grant
	renews  bool        // keep-alive runs
	err     error       // why done closed

	done    chan struct{}
	stop    chan struct{} // closed by Release to end keep-alive
	stopped chan struct{} // closed when keep-alive has ended
}

// Name is the lock's name.
func (l *Lock) Name() string { return l.name }

// Owner is the holder name sent with the acquire.
func (l *Lock) Owner() string { return l.owner }

// Token is the fencing token of this lease: larger than every token
// handed out before it for this name.
func (l *Lock) Token() uint64 { return l.token }

// Done is closed when the lock is no longer held: lost, released, or its
// lease ran out. It closes at Expires at the latest, even while a renewal
// is still in flight: a renewal that has not been acknowledged by then
// cannot be counted on.
func (l *Lock) Done() <-chan struct{} { return l.done }

// Err is nil while the lock is held, then matches ErrLockLost or
// ErrLockReleased.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Expires is this process's conservative estimate of when the lease ends
// unless renewed: it counts from when the request that set it was sent,
// never from when its reply arrived. Done closes at this instant unless a
// renewal moved it first.
func (l *Lock) Expires() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expires
}

// finish closes done once, recording why.
func (l *Lock) finish(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.finishLocked(err)
}

func (l *Lock) finishLocked(err error) {
	if l.err != nil {
		return
	}
	l.err = err
	l.expiry.Stop()
	close(l.done)
}

// grant records a lease of ttl granted by a request sent at sent: the
// locker counts the lease from no earlier than that, so sent+ttl is an end
// the real lease does not precede, whenever the reply arrived. A lock
// already lost stays lost.
func (l *Lock) grant(sent time.Time, ttl time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return
	}
	l.ttl, l.expires = ttl, sent.Add(ttl)
	l.expiry.Reset(time.Until(l.expires))
}

// onExpiry runs when the expiry timer fires. A grant that moved the lease
// end after the timer was armed may race with it; the end is re-read under
// the lock, so a renewal acknowledged in time always wins and a late one
// never reopens Done.
func (l *Lock) onExpiry() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return
	}
	if left := time.Until(l.expires); left > 0 {
		l.expiry.Reset(left)
		return
	}
	why := "ran out before it could be renewed"
	if !l.renews {
		why = "ended (no keep-alive)"
	}
	l.finishLocked(fmt.Errorf("%w: lease of %q %s", ErrLockLost, l.name, why))
}

// Acquire takes the named lock. A held lock is an error matching
// ErrLockHeld (an ErrConflict) once the wait, if any, has passed.
// While waiting, Acquire retries through brief locker outages (503).
func (c *Client) Acquire(ctx context.Context, name string, opts ...LockOption) (*Lock, error) {
	o := lockOptions{ttl: DefaultLeaseTTL, keepAlive: true}
	for _, f := range opts {
		f(&o)
	}
	if o.owner == "" {
		o.owner = defaultOwner()
	}
	waitUntil := time.Now().Add(o.wait)
	for {
		req := &pb.AcquireRequest{Name: name, Owner: o.owner, TtlMs: ttlMillis(o.ttl)}
		if o.wait > 0 {
			req.WaitMs = max(time.Until(waitUntil).Milliseconds(), 1)
		}
		sent := time.Now()
		resp := &pb.AcquireResponse{}
		err := c.callWait(ctx, subjects.LockAcquire, req, resp, time.Duration(req.WaitMs)*time.Millisecond)
		if err == nil {
			return c.held(ctx, name, o, resp, sent)
		}
		if o.wait <= 0 || !errors.Is(err, ErrUnavailable) || time.Until(waitUntil) < 100*time.Millisecond {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// callWait is call with room for a server-side wait of up to wait.
func (c *Client) callWait(ctx context.Context, endpoint string, req, resp proto.Message, wait time.Duration) error {
	return c.callWithin(ctx, endpoint, req, resp, wait+c.timeout)
}

func (c *Client) held(ctx context.Context, name string, o lockOptions, resp *pb.AcquireResponse, sent time.Time) (*Lock, error) {
	ttl := time.Duration(resp.TtlMs) * time.Millisecond
	l := &Lock{
		c: c, name: name, owner: o.owner, token: resp.Token, renews: o.keepAlive,
		done: make(chan struct{}), stop: make(chan struct{}), stopped: make(chan struct{}),
	}
	l.mu.Lock()
	l.ttl, l.expires = ttl, sent.Add(ttl)
	l.expiry = time.AfterFunc(time.Until(l.expires), l.onExpiry)
	l.mu.Unlock()
	// After a long wait the grant may have happened anywhere since sent;
	// one renewal pins the lease end to a known time.
	if time.Since(sent) > ttl/10 {
		if err := l.renewOnce(ctx); err != nil {
			l.finish(fmt.Errorf("%w: %w", ErrLockLost, err))
			close(l.stopped)
			return nil, err
		}
	}
	if o.keepAlive {
		go l.keepAlive()
	} else {
		close(l.stopped)
	}
	return l, nil
}

// renewOnce renews the lease for its current TTL and moves the local
// expiry estimate. The request is bounded by the lease left: the locker
// refuses a renewal of a lease that has ended, so waiting longer for one
// is pointless, and its answer would come after Done closed anyway.
func (l *Lock) renewOnce(ctx context.Context) error {
	ctx, cancel := context.WithDeadline(ctx, l.Expires())
	defer cancel()
	sent := time.Now()
	ttl, err := l.c.Renew(ctx, l.name, l.token, 0)
	if err != nil {
		return err
	}
	l.grant(sent, ttl)
	return nil
}

// keepAlive renews at a third of the TTL. A refused renewal (409) ends the
// lock at once; failures to reach the locker are retried more often until
// the lease ends, when the expiry timer closes Done (not this loop, which
// may be waiting on a renewal then).
func (l *Lock) keepAlive() {
	defer close(l.stopped)
	l.mu.Lock()
	next := time.Now().Add(l.ttl / 3)
	l.mu.Unlock()
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.done:
			return
		case <-t.C:
		}
		l.mu.Lock()
		ttl := l.ttl
		l.mu.Unlock()
		err := l.renewOnce(context.Background())
		switch {
		case err == nil:
			next = time.Now().Add(ttl / 3)
		case errors.Is(err, ErrConflict), errors.Is(err, ErrInvalid):
			l.finish(fmt.Errorf("%w: %w", ErrLockLost, err))
			return
		default:
			next = time.Now().Add(max(ttl/10, 200*time.Millisecond))
		}
		t.Reset(time.Until(next))
	}
}

// Release ends the lease so a waiter can take the lock at once. It stops
// the keep-alive first. Releasing a lock that was already lost returns
// the loss (matching ErrLockLost); releasing twice returns nil.
func (l *Lock) Release(ctx context.Context) error {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.stopped
	if err := l.Err(); err != nil {
		if errors.Is(err, ErrLockReleased) {
			return nil
		}
		return err
	}
	err := l.c.ReleaseLock(ctx, l.name, l.token)
	if err != nil && errors.Is(err, ErrConflict) {
		l.finish(fmt.Errorf("%w: %w", ErrLockLost, err))
		return l.Err()
	}
	if err != nil {
		// Not known to be released: the lease ends by itself at its TTL.
		l.finish(fmt.Errorf("%w: release failed, the lease ends at its TTL: %w", ErrLockLost, err))
		return err
	}
	l.finish(ErrLockReleased)
	return nil
}

// Renew extends the lease of the holder of token; ttl 0 keeps the lease
// length. It returns the lease granted (rounded up to whole seconds). A
// token that no longer holds the lock is ErrNotHeld (an ErrConflict).
func (c *Client) Renew(ctx context.Context, name string, token uint64, ttl time.Duration) (time.Duration, error) {
	resp := &pb.RenewResponse{}
	if err := c.call(ctx, subjects.LockRenew, &pb.RenewRequest{Name: name, Token: token, TtlMs: ttlMillis(ttl)}, resp); err != nil {
		return 0, err
	}
	return time.Duration(resp.TtlMs) * time.Millisecond, nil
}

// ReleaseLock releases the lease of the holder of token (low level; a
// *Lock has Release). A token that no longer holds the lock is
// ErrNotHeld (an ErrConflict).
func (c *Client) ReleaseLock(ctx context.Context, name string, token uint64) error {
	return c.call(ctx, subjects.LockRelease, &pb.ReleaseRequest{Name: name, Token: token}, &pb.ReleaseResponse{})
}

// LockState is a lock as lock.get reports it.
type LockState struct {
	Name         string
	Held         bool
	Owner        string
	Token        uint64
	TTLRemaining time.Duration
}

// LockInfo reports who holds the named lock, read from the lock bucket's
// leader (not a cached view).
func (c *Client) LockInfo(ctx context.Context, name string) (*LockState, error) {
	resp := &pb.GetLockResponse{}
	if err := c.call(ctx, subjects.LockGet, &pb.GetLockRequest{Name: name}, resp); err != nil {
		return nil, err
	}
	return &LockState{
		Name: name, Held: resp.Held, Owner: resp.Owner, Token: resp.Token,
		TTLRemaining: time.Duration(resp.TtlRemainingMs) * time.Millisecond,
	}, nil
}
