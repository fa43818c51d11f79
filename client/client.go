// Package client is the Go client of latchkey: a sharded key-value store
// and lock service on NATS. It speaks protobuf over NATS request-reply to
// the router and locker services (docs/API.md).
//
// Every call takes a context; its deadline is also sent to the service so
// that work nobody waits for is abandoned. Failures are *Error values that
// match the sentinel errors below with errors.Is.
package client

import (
	"context"
	"errors"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/wire"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// Sentinel errors, one per API status code. Compare with errors.Is.
var (
	// ErrInvalid: the request broke a rule of the API (400).
	ErrInvalid = apierr.ErrInvalid
	// ErrNotFound: the key is absent (returned by Get) (404).
	ErrNotFound = apierr.ErrNotFound
	// ErrConflict: revision mismatch, stale fence, lock held or lost (409).
	ErrConflict = apierr.ErrConflict
	// ErrTooLarge: a key, value, name or owner exceeds its limit (413).
	ErrTooLarge = apierr.ErrTooLarge
	// ErrUnavailable: a shard or NATS is down or overloaded; retry (503).
	ErrUnavailable = apierr.ErrUnavailable
	// ErrInternal: a server-side bug (500).
	ErrInternal = apierr.ErrInternal
)

// Sentinel errors, one per reason a caller acts on (docs/API.md lists every
// reason). They match with errors.Is on what a call returns, also through
// wrapping; the sentinels of the status codes above match too, so
// errors.Is(err, ErrConflict) and errors.Is(err, ErrLockHeld) both hold for
// a held lock.
var (
	// ErrRevisionMismatch: a write's expected revision is not the key's (409).
	ErrRevisionMismatch error = apierr.ReasonRevisionMismatch
	// ErrStaleFence: a newer token of the fence's lock already wrote the key (409).
	ErrStaleFence error = apierr.ReasonStaleFence
	// ErrLockHeld: someone else holds the lock, also after the wait (409).
	ErrLockHeld error = apierr.ReasonLockHeld
	// ErrNotHeld: the token no longer holds the lock: released, expired or
	// taken over (409).
	ErrNotHeld error = apierr.ReasonNotHeld
	// ErrRenewTooLate: the lease ran out while the renewal was under way (409).
	ErrRenewTooLate error = apierr.ReasonRenewTooLate
	// ErrFencedKeyTTL: ttl_ms on a key that carries fences (409).
	ErrFencedKeyTTL error = apierr.ReasonFencedKeyTTL
	// ErrTooManyFences: the key is already fenced by the most locks it may
	// carry (409).
	ErrTooManyFences error = apierr.ReasonTooManyFences
	// ErrUnknownToken: a fence token lock.acquire never issued (400).
	ErrUnknownToken error = apierr.ReasonUnknownToken
	// ErrCursorExpired: a watch cursor the shard no longer holds; start
	// over with WatchInitial (409).
	ErrCursorExpired error = apierr.ReasonCursorExpired
)

// Error is the error type of every failed call. Reason is a stable
// machine-readable word ("revision_mismatch", "stale_fence", "lock_held",
// ...); Message says what went wrong.
type Error = apierr.Error

// Reason returns the machine-readable reason of err, or of the *Error it
// wraps, or "" if err did not come from a latchkey service. To act on a
// reason, errors.Is(err, ErrLockHeld) and friends read better.
func Reason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// Client talks to one latchkey deployment over an existing NATS connection.
// It is safe for concurrent use.
type Client struct {
	nc      *nats.Conn
	subj    subjects.Set
	timeout time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithPrefix sets the deployment's subject prefix (default "latchkey").
func WithPrefix(prefix string) Option { return func(c *Client) { c.subj = subjects.New(prefix) } }

// WithTimeout bounds every call (default 5s), also when the context allows
// longer: a request whose reply is lost with a dying NATS server then fails
// with ErrUnavailable after d instead of hanging until a far deadline.
// Lock acquisitions that wait get their wait on top.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// New returns a client using nc. The caller keeps ownership of nc.
func New(nc *nats.Conn, opts ...Option) *Client {
	c := &Client{nc: nc, subj: subjects.New(""), timeout: 5 * time.Second}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Conn returns the NATS connection the client uses.
func (c *Client) Conn() *nats.Conn { return c.nc }

// call sends req to a public endpoint (e.g. subjects.KVGet) and decodes the
// reply into resp, within the client's timeout.
func (c *Client) call(ctx context.Context, endpoint string, req, resp proto.Message) error {
	return c.callWithin(ctx, endpoint, req, resp, c.timeout)
}

// callWithin is call bounded by d (or ctx, if that ends first).
func (c *Client) callWithin(ctx context.Context, endpoint string, req, resp proto.Message, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return wire.Call(ctx, c.nc, c.subj.Public(endpoint), nil, req, resp)
}
