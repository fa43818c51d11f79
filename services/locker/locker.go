// Package locker is latchkey's lock service: named leases with fencing
// tokens, kept in one JetStream KV bucket.
//
// Each lock name is one key (base64url of the name) whose value is a
// pb.LockRecord. Every write is a compare-and-set on the key's last stream
// sequence (jskv.PublishIfLast), so two lockers can never both grant a
// lease. The sequence and the content it stands for come from the
// instance's view of the bucket (view.go) when it has them, else from the
// stream leader (jskv.LeaderGet); a refused guess is re-read. A record
// carries a per-message TTL (Nats-TTL, rounded up to whole seconds); the
// bucket has LimitMarkerTTL, so the NATS server itself removes an unrenewed
// record and writes an expiry marker, even when no locker runs.
//
// The fencing token of a lease is the stream sequence of the write that
// acquired it. Stream sequences only grow, across locker restarts and
// JetStream leader changes, so every token is larger than every token
// handed out before for any name. The acquiring write cannot know its own
// sequence, so its record has token 0, meaning "the sequence of this
// message"; renewals write the token explicitly.
//
// Waiting acquires (wait_ms > 0) do not poll: each locker instance keeps
// one KV watch per waited-on name, shared by its waiters, and wakes them
// one at a time in arrival order. Watches may miss or repeat events, so a
// waiter also re-reads on a timer (the holder's remaining lease + 250ms).
// Arrival order holds within one instance only; instances race each other
// fairly but without order, and a try-once acquire may take a freed lock
// before the head waiter.
package locker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/limits"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/telemetry"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

const (
	// ServiceName is the micro service name of the locker.
	ServiceName = "latchkey-locker"
	// MaxWaitMillis bounds wait_ms: a request must not occupy a locker
	// (and the caller's connection) indefinitely.
	MaxWaitMillis = 5 * 60 * 1000
	// MarkerTTL is how long release and expiry markers stay in the bucket.
	// It keeps the bucket from collecting one tombstone per name forever.
	MarkerTTL = 15 * time.Minute

	// casRetries bounds re-read-and-retry rounds after a lost
	// compare-and-set before an operation gives up.
	casRetries = 8
	// recheckSlack is added to a holder's remaining lease before a waiter
	// re-reads on its own: the server's expiry timer ticks every ~250ms.
	recheckSlack = 250 * time.Millisecond
	// replyMargin is kept from the caller's deadline so a waiter that did
	// not get the lock can still say so (409) before the caller gives up.
	replyMargin = 100 * time.Millisecond
	// requestTimeout is the service deadline of a request without one; the
	// service runtime honours caller deadlines up to 12x this, which must
	// exceed MaxWaitMillis.
	requestTimeout = 30 * time.Second
)

// Config configures a locker.
type Config struct {
	Prefix   string // "" = "latchkey"
	Replicas int    // JetStream replicas of the lock bucket; 0 = 1
	Logger   *slog.Logger
	// ReleaseMarkerTTL is how long a release marker stays in the bucket
	// before the server removes it; 0 = MarkerTTL. Tests shorten it to
	// reach the instant a marker expires under an acquire.
	ReleaseMarkerTTL time.Duration
	// RenewGuard is how long before a lease's server-side expiry a renewal
	// is still accepted; later ones are 409 renew_too_late, because the
	// server's expiry marker could swallow them. 0 = DefaultRenewGuard.
	RenewGuard time.Duration
	// Unsafe switches off safety checks; only tests set it, to prove that
	// the tests and `latchkey check` catch what the checks prevent.
	Unsafe Unsafe
}

// Unsafe names the safety checks a test can switch off. Never set in a
// deployment.
type Unsafe struct {
	// NoRenewGuard accepts renewals however close the lease is to its
	// expiry, so an acknowledged renewal can be swallowed and a second
	// holder acquire while the first believes it holds.
	NoRenewGuard bool
	// NoMarkerGuard lets an acquire write on a release marker however
	// close its own expiry is, so the server's rollup can purge the acquire.
	NoMarkerGuard bool
}

// Server is a running locker instance. Any number may run against one
// deployment; they share the bucket and agree through it.
type Server struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	log     *slog.Logger
	stream  string
	subj    string // "$KV.<bucket>." — key tokens follow
	barrier string // "$KV.<bucket>.=sync": confirmations of reads
	guard   time.Duration
	markTTL time.Duration // release markers' Nats-TTL
	unsafe  Unsafe
	svc     *service.Service
	id      string        // this instance, in its write ids
	writes  atomic.Uint64 // write ids issued

	ctx    context.Context // cancelled by Stop: ends waits and watches
	cancel context.CancelFunc

	view     *view         // guesses of each key's last message (view.go)
	followed chan struct{} // closed when the view's consumer has stopped

	mu     sync.Mutex
	queues map[string]*waitQueue
}

// Start creates (or reuses) the lock bucket and serves the lock endpoints.
func Start(ctx context.Context, nc *nats.Conn, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	set := subjects.New(cfg.Prefix)
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	bucket := set.LockBucket()
	kv, err := jskv.EnsureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket:         bucket,
		Description:    "latchkey locks: one key per lock name, value pb.LockRecord",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       cfg.Replicas,
		LimitMarkerTTL: MarkerTTL,
	}, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("lock bucket: %w", err)
	}
	if cfg.RenewGuard <= 0 {
		cfg.RenewGuard = DefaultRenewGuard
	}
	s := &Server{
		nc: nc, js: js, kv: kv, log: cfg.Logger,
		stream: "KV_" + bucket, subj: "$KV." + bucket + ".",
		barrier: "$KV." + bucket + "." + jskv.BarrierToken,
		guard:   cfg.RenewGuard, unsafe: cfg.Unsafe,
		markTTL: cmp.Or(cfg.ReleaseMarkerTTL, MarkerTTL),
		queues:  map[string]*waitQueue{},
		id:      nuid.Next(),
		view:    newView(), followed: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go func() {
		defer close(s.followed)
		s.follow(s.ctx)
	}()
	ep := func(name, endpoint string, f service.Func) service.Endpoint {
		return service.Endpoint{Name: name, Subject: set.Public(endpoint), Func: instrument(name, f)}
	}
	s.svc, err = service.Start(nc, service.Config{
		Name:        ServiceName,
		Version:     "0.1.0",
		Description: "latchkey leases with fencing tokens on JetStream KV",
		Metadata:    map[string]string{"bucket": bucket},
		Logger:      cfg.Logger,
		Timeout:     requestTimeout,
	},
		ep("acquire", subjects.LockAcquire, s.acquire),
		ep("renew", subjects.LockRenew, s.renew),
		ep("release", subjects.LockRelease, s.release),
		ep("get", subjects.LockGet, s.get),
	)
	if err != nil {
		s.cancel()
		<-s.followed
		return nil, err
	}
	return s, nil
}

// Stop stops taking requests, answers waiting acquires with 503 (the
// caller retries elsewhere), and waits for requests in flight up to ctx.
// Leases stay in the bucket and expire or are renewed through other
// instances.
func (s *Server) Stop(ctx context.Context) error {
	s.cancel()
	err := s.svc.Stop(ctx)
	<-s.followed
	return err
}

// lease is the state of a lock as read from the leader, or as the view
// guesses it (view.go).
type lease struct {
	seq     uint64    // last stream sequence of the key (0: no message)
	exp     time.Time // when the server expires that message (its clock); zero: never
	held    bool
	record  *pb.LockRecord // token resolved; nil unless held
	writeID string         // jskv.HeaderWriteID of that message, if a locker wrote it
}

func (l lease) remaining(now time.Time) time.Duration {
	if !l.held {
		return 0
	}
	d := time.UnixMilli(l.record.GetExpiresUnixMs()).Sub(now)
	if d < 0 {
		return 0
	}
	return d
}

// read reads name's last message from the stream leader. What it finds
// also becomes the view's guess for the key.
func (s *Server) read(ctx context.Context, name string) (lease, error) {
	key := jskv.EncodeKey(name)
	sctx, span := telemetry.StartJetStream(ctx, telemetry.JSGet, s.stream)
	m, found, err := jskv.LeaderGet(sctx, s.nc, s.stream, s.subj+key)
	if found {
		span.SetAttributes(telemetry.AttrRevision.Int64(int64(m.Seq)))
	}
	telemetry.End(span, 0, err)
	if err != nil || !found {
		return lease{}, err
	}
	e, err := entryOf(m.Seq, m.Time, m.Header, m.Data)
	if err != nil {
		s.view.forget(key, m.Seq)
		return lease{}, apierr.Errorf(apierr.ReasonCorruptLock, "lock %q has an unreadable record at sequence %d: %v", name, m.Seq, err)
	}
	s.view.apply(key, e, false, false)
	return e.lease(), nil
}

// guess is the view's lease for name, if the view can give one whose
// message does not expire within the guard: a message that may expire
// under a write conditioned on it is only written on by the guarded
// paths, which decide on a leader read (edges.go); with a guard switched
// off (Unsafe) those paths still write, so the tests that prove a guard
// matters race exactly the path the guard protects.
func (s *Server) guess(name string) (lease, bool) {
	l, ok := s.view.guess(jskv.EncodeKey(name))
	if !ok || s.expiring(l) {
		return lease{}, false
	}
	return l, true
}

// wrote tells the view about this instance's acknowledged write at seq of
// name: rec, or a release marker when rec is nil, sent at sent with a TTL
// of ttl. The server stamped the message at sent or later, so the expiry
// taken from sent is never later than the server's: the guards only see
// the message as expiring sooner than it does.
func (s *Server) wrote(name string, seq uint64, rec *pb.LockRecord, sent time.Time, ttl time.Duration, id string) {
	e := viewEntry{seq: seq, exp: sent.Add(time.Duration(jskv.CeilSeconds(ttl.Milliseconds())) * time.Second), writeID: id}
	if rec != nil {
		e.record = proto.CloneOf(rec)
		if e.record.Token == 0 {
			e.record.Token = seq
		}
	}
	s.view.apply(jskv.EncodeKey(name), e, false, false)
}

// writeID names one request's write (jskv.HeaderWriteID): unique across
// locker instances, so a write read back with it is this request's own.
func (s *Server) writeID() string {
	return s.id + "-" + strconv.FormatUint(s.writes.Add(1), 36)
}

// write stores rec for name with a TTL of ttlMs (rounded up), if the key's
// last sequence is still expected.
func (s *Server) write(ctx context.Context, name string, rec *pb.LockRecord, expected uint64, id string) (uint64, error) {
	data, err := proto.Marshal(rec)
	if err != nil {
		return 0, err
	}
	hdr := nats.Header{jskv.HeaderTTL: {jskv.TTLHeader(rec.TtlMs)}, jskv.HeaderWriteID: {id}}
	return s.publishIfLast(ctx, name, data, hdr, expected)
}

// publishIfLast is jskv.PublishIfLast on name's key, in a JetStream span.
func (s *Server) publishIfLast(ctx context.Context, name string, data []byte, hdr nats.Header, expected uint64) (uint64, error) {
	ctx, span := telemetry.StartJetStream(ctx, telemetry.JSPublish, s.stream)
	seq, err := jskv.PublishIfLast(ctx, s.js, s.subj+jskv.EncodeKey(name), data, hdr, expected)
	switch {
	case err == nil:
		span.SetAttributes(telemetry.AttrRevision.Int64(int64(seq)))
		telemetry.End(span, 0, nil)
	case errors.Is(err, jskv.ErrWrongLastSequence):
		telemetry.End(span, 409, err) // a lost race is an outcome, not a failure
	default:
		telemetry.End(span, 0, err)
	}
	return seq, err
}

// describe labels the request's span with the lock it is about.
func describe(ctx context.Context, name string, token uint64) {
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(telemetry.AttrLockName.String(name))
	if token != 0 {
		span.SetAttributes(telemetry.AttrLockToken.Int64(int64(token)))
	}
}

func grantedTTL(ms int64) int64 { return jskv.CeilSeconds(ms) * 1000 }

func heldError(name string, l lease) error {
	return apierr.Errorf(apierr.ReasonLockHeld, "lock %q is held (owner %q, token %d)", name, l.record.GetOwner(), l.record.GetToken())
}

func notHeld(name string, token uint64) error {
	return apierr.Errorf(apierr.ReasonNotHeld, "token %d does not hold lock %q (released, expired or taken over)", token, name)
}

func lostRaceError(name string) error {
	return apierr.Errorf(apierr.ReasonLockHeld, "lock %q is contended; it changed %d times while this request tried", name, casRetries)
}

// tryAcquire makes one attempt (with CAS retries) at the lock. It returns
// the response, or the lease that holds it. markerSeq, if not 0, is the
// sequence of a delete or expiry marker a watch just reported: the first
// write is then conditioned on it without reading first (the CAS makes
// that safe; a stale hint only costs a conflict and a read). Without a
// hint, the first write is conditioned on the view's guess when the view
// says the lock is free (no message, or a marker not about to expire):
// stored, the write was made on exactly that free state. A lock the view
// says is held is read from the leader before it is answered lock_held.
//
// A write the server refused may still have been stored: the read after
// it recognises the request's own write by its id and grants it, rather
// than answer lock_held and leave the caller's lease blocking everyone.
func (s *Server) tryAcquire(ctx context.Context, in *pb.AcquireRequest, markerSeq uint64) (*pb.AcquireResponse, lease, error) {
	refused, busy, id := uint64(0), 0, s.writeID()
	tryView, prevGuess := markerSeq == 0, false
	for lost := 0; lost < casRetries; {
		l, fromView := lease{seq: markerSeq}, false
		if tryView {
			g, ok := s.guess(in.Name)
			l, fromView = g, ok && !g.held
		}
		if !fromView && markerSeq == 0 {
			var err error
			if l, err = s.read(ctx, in.Name); err != nil {
				return nil, lease{}, err
			}
			if l.held && l.writeID == id {
				writesRecognised.Inc()
				return &pb.AcquireResponse{Token: l.record.Token, TtlMs: l.record.TtlMs}, lease{}, nil
			}
			if l.held {
				return nil, l, nil
			}
		}
		markerSeq, tryView = 0, false
		if refused != 0 && l.seq+1 == refused {
			// Refused, yet nothing changed: another write on the key was
			// in flight (see whileHeld). Wait it out; it is not a lost race.
			busy++
			if err := jskv.WaitInFlight(ctx, "lock "+in.Name, busy); err != nil {
				return nil, lease{}, err
			}
		} else if refused != 0 && !prevGuess {
			lost++ // (a refused guess of the view was only out of date)
		}
		if !s.unsafe.NoMarkerGuard && s.expiring(l) {
			// A release marker that runs out now: its expiry could purge
			// an acquire conditioned on it. Let the server replace it.
			if err := s.awaitChange(ctx, in.Name, l); err != nil {
				return nil, lease{}, err
			}
			continue
		}
		ttl := grantedTTL(in.TtlMs)
		sent := time.Now()
		rec := &pb.LockRecord{Owner: in.Owner, TtlMs: ttl, ExpiresUnixMs: sent.UnixMilli() + ttl}
		seq, err := s.write(ctx, in.Name, rec, l.seq, id)
		if prevGuess = fromView; fromView {
			viewGuess(err)
		}
		switch {
		case err == nil:
			s.wrote(in.Name, seq, rec, sent, time.Duration(ttl)*time.Millisecond, id)
			return &pb.AcquireResponse{Token: seq, TtlMs: ttl}, lease{}, nil
		case errors.Is(err, jskv.ErrWrongLastSequence):
			refused = l.seq + 1 // someone wrote in between, or was writing: look again
		default:
			return nil, lease{}, err
		}
	}
	return nil, lease{}, lostRaceError(in.Name)
}

func (s *Server) acquire(ctx context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.AcquireRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	if err := validateAcquire(in); err != nil {
		return nil, err
	}
	describe(ctx, in.Name, 0)
	if in.WaitMs == 0 {
		resp, l, err := s.tryAcquire(ctx, in, 0)
		if err != nil {
			return nil, err
		}
		if resp == nil {
			return nil, heldError(in.Name, l)
		}
		describe(ctx, in.Name, resp.Token)
		return resp, nil
	}
	resp, err := s.acquireWait(ctx, in)
	if err == nil {
		describe(ctx, in.Name, resp.Token)
	}
	return resp, err
}

func validateAcquire(in *pb.AcquireRequest) error {
	if err := limits.LockName(limits.NameField, in.Name); err != nil {
		return err
	}
	if err := limits.Owner(in.Owner); err != nil {
		return err
	}
	if err := limits.TTL(in.TtlMs, false); err != nil {
		return err
	}
	if in.WaitMs < 0 || in.WaitMs > MaxWaitMillis {
		return apierr.Errorf(apierr.ReasonInvalidWaitMs, "wait_ms is %d; it must be between 0 and %d (5 minutes)", in.WaitMs, MaxWaitMillis)
	}
	return nil
}

func validateToken(name string, token uint64) error {
	if err := limits.LockName(limits.NameField, name); err != nil {
		return err
	}
	if token == 0 {
		return apierr.Errorf(apierr.ReasonMissingToken, "token is required: pass the token returned by acquire")
	}
	return nil
}

func (s *Server) renew(ctx context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.RenewRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	if err := validateToken(in.Name, in.Token); err != nil {
		return nil, err
	}
	describe(ctx, in.Name, in.Token)
	if err := limits.TTL(in.TtlMs, true); err != nil {
		return nil, err
	}
	var ttl int64
	id := s.writeID()
	landed := func(l lease) error {
		// Stored though refused: confirm it as a late renewal is, since
		// the guard was decided on the lease it replaced.
		ttl = l.record.GetTtlMs()
		return s.confirmRenewal(ctx, in.Name, in.Token, l.seq)
	}
	err := s.whileHeld(ctx, in.Name, in.Token, id, landed, func(l lease) error {
		if !s.unsafe.NoRenewGuard && s.expiring(l) {
			return renewTooLate(in.Name, in.Token, l, s.guard)
		}
		ttl = l.record.TtlMs
		if in.TtlMs != 0 {
			ttl = grantedTTL(in.TtlMs)
		}
		// A rewrite with Nats-TTL, not a KV Update: an Update drops the
		// TTL and the lock would never expire again.
		sent := time.Now()
		rec := &pb.LockRecord{Owner: l.record.Owner, TtlMs: ttl, ExpiresUnixMs: sent.UnixMilli() + ttl, Token: in.Token}
		seq, err := s.write(ctx, in.Name, rec, l.seq, id)
		if err == nil && !s.unsafe.NoRenewGuard && ackedLate(l) {
			err = s.confirmRenewal(ctx, in.Name, in.Token, seq)
		}
		if err == nil {
			s.wrote(in.Name, seq, rec, sent, time.Duration(ttl)*time.Millisecond, id)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return &pb.RenewResponse{TtlMs: ttl}, nil
}

// whileHeld reads the lock from the stream leader and, while token still
// holds it, runs change, a write conditioned on the sequence it was read at.
// A change that loses that race (someone renewed, released or the server
// expired the lease meanwhile) is decided again on a fresh read. This is
// the one place renew and release decide that a token still holds.
//
// A refusal after which the lock reads unchanged was not a lost race but
// another write on the key still in flight (a renewal, or a lock.get's
// confirmation): it is waited out (jskv.WaitInFlight), not counted. A
// lock that reads as change's own write (id, unique to this request) was
// stored though the server refused or never answered the publish: landed
// decides the answer.
//
// The first change is conditioned on the view's guess when the view's
// message for the key holds token (and does not expire within the guard):
// the message at a sequence never changes, so a change stored on it was
// made while token held. Whether token holds is decided from that
// message's content, never from a sequence the caller presents (a
// renewal's sequence is not its token: docs/DECISIONS.md). A guess that
// does not show token holding is no answer: the leader is read, and only
// the leader's message can make a not_held.
func (s *Server) whileHeld(ctx context.Context, name string, token uint64, id string, landed, change func(lease) error) error {
	refused, busy, prevGuess := uint64(0), 0, false
	if g, ok := s.guess(name); ok && g.writeID == id {
		writesRecognised.Inc() // a write of this request, seen before any leader read
		return landed(g)
	} else if ok && g.held && g.record.Token == token {
		err := change(g)
		viewGuess(err)
		if !errors.Is(err, jskv.ErrWrongLastSequence) {
			return err
		}
		refused, prevGuess = g.seq+1, true
	}
	for lost := 0; lost < casRetries; {
		l, err := s.read(ctx, name)
		if err != nil {
			return err
		}
		if l.writeID == id {
			writesRecognised.Inc()
			return landed(l)
		}
		if !l.held || l.record.Token != token {
			return notHeld(name, token)
		}
		if refused != 0 && l.seq+1 == refused {
			busy++
			if err := jskv.WaitInFlight(ctx, "lock "+name, busy); err != nil {
				return err
			}
		} else if refused != 0 && !prevGuess {
			lost++
		}
		prevGuess = false
		err = change(l)
		if !errors.Is(err, jskv.ErrWrongLastSequence) {
			return err
		}
		refused = l.seq + 1 // +1: a lock may be refused at sequence 0 too
	}
	return lostRaceError(name)
}

func (s *Server) release(ctx context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.ReleaseRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	if err := validateToken(in.Name, in.Token); err != nil {
		return nil, err
	}
	describe(ctx, in.Name, in.Token)
	id := s.writeID()
	hdr := nats.Header{
		jskv.HeaderKVOperation: {"DEL"},
		jskv.HeaderTTL:         {jskv.TTLHeader(s.markTTL.Milliseconds())},
		jskv.HeaderWriteID:     {id},
	}
	released := func(lease) error { return nil } // the release marker is ours
	err := s.whileHeld(ctx, in.Name, in.Token, id, released, func(l lease) error {
		sent := time.Now()
		seq, err := s.publishIfLast(ctx, in.Name, nil, hdr, l.seq)
		if err == nil {
			s.wrote(in.Name, seq, nil, sent, s.markTTL, id)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return &pb.ReleaseResponse{}, nil
}

func (s *Server) get(ctx context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.GetLockRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	if err := limits.LockName(limits.NameField, in.Name); err != nil {
		return nil, err
	}
	describe(ctx, in.Name, 0)
	l, err := s.confirmedRead(ctx, in.Name)
	if err != nil {
		return nil, err
	}
	if !l.held {
		return &pb.GetLockResponse{}, nil
	}
	return &pb.GetLockResponse{
		Held:           true,
		Owner:          l.record.Owner,
		Token:          l.record.Token,
		TtlRemainingMs: l.remaining(time.Now()).Milliseconds(),
	}, nil
}

// DefaultRenewGuard is the renewal guard when Config.RenewGuard is 0.
const DefaultRenewGuard = 250 * time.Millisecond
