package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/wire"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
)

// ErrWatchClosed matches the error of a watch that ended: Watcher.Err
// wraps it together with the cause (the context's error, a refused resume
// such as a 409 cursor_expired, or Stop).
var ErrWatchClosed = errors.New("latchkey: watch closed")

// EventType says what a watch Event reports.
type EventType int

// Event types.
const (
	EventPut    EventType = iota + 1 // the key was written
	EventDelete                      // the key was deleted
	EventExpire                      // the key's TTL ran out
	// EventInitialDone follows the initial snapshot of every shard
	// (WatchInitial), once.
	EventInitialDone
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventExpire:
		return "expire"
	case EventInitialDone:
		return "initial_done"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change of a watched key.
type Event struct {
	Type     EventType
	Key      string
	Value    []byte // the new value (EventPut)
	Revision uint64
	Shard    string
}

// WatchOption configures Watch.
type WatchOption func(*watchConfig)

type watchConfig struct {
	key      bool
	initial  bool
	cursors  map[string]string
	buffer   int
	silence  time.Duration
	interval time.Duration
}

// WatchKey makes Watch follow exactly the key given as prefix.
func WatchKey() WatchOption { return func(c *watchConfig) { c.key = true } }

// WatchInitial delivers every matching key's current value first, then one
// EventInitialDone. An interrupted snapshot continues where it stopped;
// before EventInitialDone it may then also bring deletes of keys it never
// showed.
func WatchInitial() WatchOption { return func(c *watchConfig) { c.initial = true } }

// WatchFrom resumes from cursors saved from Watcher.Cursors.
func WatchFrom(cursors map[string]string) WatchOption {
	return func(c *watchConfig) { c.cursors = maps.Clone(cursors) }
}

// WatchBuffer sets how many events the watcher holds for a slow reader
// before it lets the feed drop and resumes (default 4096).
func WatchBuffer(n int) WatchOption { return func(c *watchConfig) { c.buffer = n } }

// WatchSilence sets how long a shard's feed may stay silent (no event, no
// heartbeat) before the watcher resumes it (default 12s; heartbeats come
// every 5s at most).
func WatchSilence(d time.Duration) WatchOption { return func(c *watchConfig) { c.silence = d } }

// WatchKeepaliveInterval sets how often the watcher sends keepalives,
// which also acknowledge how far it has read (default 5s; the server ends
// a watch without one for 30s).
func WatchKeepaliveInterval(d time.Duration) WatchOption {
	return func(c *watchConfig) { c.interval = d }
}

// Watcher is a running watch. Read Events until it is closed, then Err
// says why.
type Watcher struct {
	c      *Client
	cfg    watchConfig
	prefix string
	events chan Event
	stop   context.CancelFunc
	done   chan struct{}
	err    error

	inbox string
	msgs  chan *nats.Msg
	sub   *nats.Subscription

	mu     sync.Mutex
	id     string
	shards map[string]*shardFeed

	dropped   int // messages nats.go dropped for a full buffer, as of the last (re)start
	resumes   atomic.Int64
	cancelled atomic.Int64
	kick      chan string
	// reshard carries keepalive answers that name a different set of
	// shards to the run loop, which adds and drops feeds (extend).
	reshard chan *pb.WatchKeepaliveResponse
}

type shardFeed struct {
	seq uint64 // last event seq received in order
	// pos is the highest shard stream position delivered (an event
	// cursor's sequence): a resumed feed replays from an older cursor, and
	// what it replays up to pos was delivered already. Not the revision: a
	// key keeps its revision when a move copies it to another shard, so a
	// shard's revisions do not grow with its stream.
	pos     uint64
	cursor  string
	heard   time.Time
	initial bool // INITIAL_DONE seen
	// drainTo, for a shard a move removed from the set: the stream
	// position after which its feed carries no event; once the cursor has
	// reached it the shard is dropped. 0 = the shard is in the set.
	drainTo uint64
}

// Watch follows every key that starts with prefix ("" = every key) on every
// shard. The watcher notices lost events (a gap in a shard's seq, or a
// shard's silence) and resumes from its cursors by itself, across
// reconnects and fail-overs of storage instances and NATS servers; per
// key, events arrive in revision order, and after a resume each changed
// key is delivered at least in its latest state. The events channel closes
// when ctx ends, Stop is called, or a resume is refused (Err tells,
// matching ErrWatchClosed and the cause).
func (c *Client) Watch(ctx context.Context, prefix string, opts ...WatchOption) (*Watcher, error) {
	cfg := watchConfig{buffer: 4096, silence: 12 * time.Second, interval: 5 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{c: c, cfg: cfg, prefix: prefix, stop: cancel, done: make(chan struct{}),
		events: make(chan Event, 64), msgs: make(chan *nats.Msg, cfg.buffer), kick: make(chan string, 1),
		reshard: make(chan *pb.WatchKeepaliveResponse, 1)}
	w.inbox = c.nc.NewInbox()
	sub, err := c.nc.ChanSubscribe(w.inbox, w.msgs)
	if err != nil {
		cancel()
		return nil, err
	}
	// A full buffer drops messages (nats.go's slow consumer): the gap is
	// noticed and the feed resumed, so the buffer bounds memory.
	_ = sub.SetPendingLimits(cfg.buffer, 64<<20)
	w.sub = sub
	if err := w.start(ctx, cfg.cursors, cfg.initial, false); err != nil {
		cancel()
		_ = sub.Unsubscribe()
		return nil, err
	}
	go w.run(ctx)
	go w.keepalive(ctx)
	return w, nil
}

// Events returns the channel of events; it is closed when the watch ends.
func (w *Watcher) Events() <-chan Event { return w.events }

// Err returns why the watch ended (nil while it runs).
func (w *Watcher) Err() error {
	select {
	case <-w.done:
		return w.err
	default:
		return nil
	}
}

// Stop ends the watch and waits until its channel is closed.
func (w *Watcher) Stop() {
	w.stop()
	<-w.done
}

// Resumes counts the times the watcher resumed a watch (after a gap,
// silence, cancellation by the server or a lost feed).
func (w *Watcher) Resumes() int64 { return w.resumes.Load() }

// Cancellations counts the CANCELLED events the server sent (e.g. reason
// slow_consumer).
func (w *Watcher) Cancellations() int64 { return w.cancelled.Load() }

// Cursors returns the position of every shard up to which events were
// delivered, for WatchFrom.
func (w *Watcher) Cursors() map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]string{}
	for id, s := range w.shards {
		out[id] = s.cursor
	}
	return out
}

// scoped sets what the watch covers (one key, or a prefix) on req.
func (w *Watcher) scoped(req *pb.WatchRequest) *pb.WatchRequest {
	if w.cfg.key {
		req.Key = w.prefix
	} else {
		req.Prefix = w.prefix
	}
	return req
}

// start asks for a new watch from cursors (nil: from now, or initial);
// catchUpDone continues an interrupted initial snapshot.
func (w *Watcher) start(ctx context.Context, cursors map[string]string, initial, catchUpDone bool) error {
	req := w.scoped(&pb.WatchRequest{Cursors: cursors, Initial: initial, Deliver: w.inbox, CatchUpDone: catchUpDone})
	resp := &pb.WatchResponse{}
	if err := w.c.call(ctx, subjects.KVWatch, req, resp); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	old := w.shards
	w.id = resp.WatchId
	w.shards = map[string]*shardFeed{}
	now := time.Now()
	for id, cur := range resp.Cursors {
		// A resumed feed first replays what changed since cursors[id]:
		// until one of those events arrives, that is still where a
		// further resume must start (the response's cursor is past them).
		// An initial snapshot replays from the stream's start.
		if c, ok := cursors[id]; ok {
			cur = c
		} else if initial {
			cur = "0-" + strconv.FormatInt(now.UnixMilli(), 10)
		}
		sf := &shardFeed{cursor: cur, heard: now, initial: !initial && !catchUpDone}
		if o, ok := old[id]; ok {
			sf.pos = o.pos
			sf.initial = sf.initial || o.initial
		}
		w.shards[id] = sf
	}
	return nil
}

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	defer close(w.events)
	defer func() { _ = w.sub.Unsubscribe() }()
	defer w.cancelCurrent()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	initialSent := !w.cfg.initial
	for {
		var why string
		select {
		case <-ctx.Done():
			w.err = fmt.Errorf("%w: %w", ErrWatchClosed, context.Cause(ctx))
			return
		case why = <-w.kick:
		case ka := <-w.reshard:
			why = w.follow(ctx, ka)
		case <-tick.C:
			why = w.silent()
			if why == "" {
				why = w.droppedSince()
			}
		case m := <-w.msgs:
			ev := &pb.WatchEvent{}
			if wire.Decode(m.Data, wire.IsJSON(m.Header, m.Data), ev) != nil {
				continue
			}
			var out *Event
			out, why = w.accept(ev, &initialSent)
			if out != nil {
				select {
				case w.events <- *out:
				case <-ctx.Done():
					continue
				}
				w.mu.Lock()
				if s := w.shards[ev.Shard]; s != nil && ev.WatchId == w.id {
					s.cursor = ev.Cursor
				}
				w.mu.Unlock()
			}
			w.dropDrained()
			if why == "" && len(w.msgs) == 0 {
				// Caught up with the buffer: if nats.go dropped messages
				// meanwhile, they are lost for sure; resume now rather
				// than wait for the next heartbeat to show the gap.
				why = w.droppedSince()
			}
		}
		if why == "" {
			continue
		}
		if err := w.resume(ctx, why); err != nil {
			if ctx.Err() != nil {
				err = context.Cause(ctx)
			}
			w.err = fmt.Errorf("%w: %w", ErrWatchClosed, err)
			return
		}
	}
}

// accept checks one event against its shard's feed: it returns the event
// to deliver, if any, and a reason to resume when events were lost.
func (w *Watcher) accept(ev *pb.WatchEvent, initialSent *bool) (*Event, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ev.WatchId != w.id {
		return nil, "" // an event of a watch we left
	}
	s := w.shards[ev.Shard]
	if s == nil {
		return nil, ""
	}
	s.heard = time.Now()
	if ev.Type == pb.WatchEventType_WATCH_EVENT_TYPE_HEARTBEAT {
		if ev.Seq != s.seq {
			return nil, fmt.Sprintf("shard %s: heartbeat says seq %d, last received %d", ev.Shard, ev.Seq, s.seq)
		}
		s.cursor = ev.Cursor
		return nil, ""
	}
	if ev.Seq != s.seq+1 {
		return nil, fmt.Sprintf("shard %s: gap, seq %d after %d", ev.Shard, ev.Seq, s.seq)
	}
	s.seq = ev.Seq
	var t EventType
	switch ev.Type {
	case pb.WatchEventType_WATCH_EVENT_TYPE_CANCELLED:
		w.cancelled.Add(1)
		return nil, "shard " + ev.Shard + " cancelled: " + ev.Reason
	case pb.WatchEventType_WATCH_EVENT_TYPE_INITIAL_DONE:
		s.initial, s.cursor = true, ev.Cursor
		if !*initialSent {
			for _, o := range w.shards {
				if !o.initial {
					return nil, ""
				}
			}
			*initialSent = true
			return &Event{Type: EventInitialDone}, ""
		}
		return nil, ""
	case pb.WatchEventType_WATCH_EVENT_TYPE_PUT:
		t = EventPut
	case pb.WatchEventType_WATCH_EVENT_TYPE_DELETE:
		t = EventDelete
	case pb.WatchEventType_WATCH_EVENT_TYPE_EXPIRE:
		t = EventExpire
	default:
		return nil, ""
	}
	p := cursorSeq(ev.Cursor)
	if p <= s.pos {
		s.cursor = ev.Cursor // already delivered before a resume
		return nil, ""
	}
	s.pos = p
	return &Event{Type: t, Key: ev.Key, Value: ev.Value, Revision: ev.Revision, Shard: ev.Shard}, ""
}

// droppedSince says whether nats.go dropped messages of the watch's
// subscription (a full buffer) since the last (re)start.
func (w *Watcher) droppedSince() string {
	d, err := w.sub.Dropped()
	if err != nil || d <= w.dropped {
		return ""
	}
	n := d - w.dropped
	w.dropped = d
	return fmt.Sprintf("%d events dropped by a full buffer", n)
}

// silent names a shard whose feed has been silent too long.
func (w *Watcher) silent() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, s := range w.shards {
		if d := time.Since(s.heard); d > w.cfg.silence {
			return fmt.Sprintf("shard %s silent for %s", id, d.Round(time.Millisecond))
		}
	}
	return ""
}

// resume leaves the current watch and starts a new one from the cursors of
// what was delivered, retrying while the service is unavailable.
func (w *Watcher) resume(ctx context.Context, why string) error {
	w.resumes.Add(1)
	w.cancelCurrent()
	if d, err := w.sub.Dropped(); err == nil {
		w.dropped = d // drops so far belong to the watch being left
	}
	w.mu.Lock()
	cursors := map[string]string{}
	initialDone := true
	for id, s := range w.shards {
		cursors[id] = s.cursor
		initialDone = initialDone && s.initial
	}
	w.mu.Unlock()
	// An interrupted snapshot continues from each shard's cursor (a
	// snapshot event's cursor is its stream position, and the snapshot is
	// in stream order), ending with INITIAL_DONE again.
	catchUpDone := !initialDone
	for wait := 100 * time.Millisecond; ; wait = min(wait*2, 2*time.Second) {
		err := w.start(ctx, cursors, false, catchUpDone)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrUnavailable) {
			return fmt.Errorf("resuming after %s: %w", why, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// cancelCurrent tells the server to end the current watch; best effort
// (an unreached feed ends at its keepalive timeout).
func (w *Watcher) cancelCurrent() {
	w.mu.Lock()
	id := w.id
	w.mu.Unlock()
	if id == "" {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = w.c.call(ctx, subjects.KVWatchCancel, &pb.WatchCancelRequest{WatchId: id}, &pb.WatchCancelResponse{})
	}()
}

// keepalive keeps the watch alive and tells the server how far the reader
// got (flow control); a watch the server lost is resumed.
func (w *Watcher) keepalive(ctx context.Context) {
	t := time.NewTicker(w.cfg.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		req := &pb.WatchKeepaliveRequest{WatchId: w.id, Acked: map[string]uint64{}}
		for id, s := range w.shards {
			req.Acked[id] = s.seq
			req.Shards = append(req.Shards, id)
		}
		w.mu.Unlock()
		resp := &pb.WatchKeepaliveResponse{}
		err := w.c.call(ctx, subjects.KVWatchKeepalive, req, resp)
		if err == nil && w.reshardNeeded(req.WatchId, resp) {
			select {
			case w.reshard <- resp:
			default:
			}
		}
		if errors.Is(err, apierr.ErrNotFound) {
			w.mu.Lock()
			same := w.id == req.WatchId
			w.mu.Unlock()
			if same {
				select {
				case w.kick <- "keepalive: " + err.Error():
				default:
				}
			}
		}
	}
}

// reshardNeeded says whether a keepalive answer of watch id names shards
// the watcher does not follow, or drain points it has not noted.
func (w *Watcher) reshardNeeded(id string, resp *pb.WatchKeepaliveResponse) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if id != w.id || len(resp.Shards) == 0 {
		return false
	}
	for _, sid := range resp.Shards {
		if w.shards[sid] == nil {
			return true
		}
	}
	for sid, pos := range resp.DrainTo {
		if s := w.shards[sid]; s != nil && s.drainTo != max(pos, 1) {
			return true
		}
	}
	return false
}

// follow adapts the watch to the shard set a keepalive answered: a shard a
// move added gets its feed, from the start of its stream (a move's copies
// there are no events, so that is exactly the writes made on it since it
// joined; a key written there before the feed started arrives in its
// latest state); a shard a move removed is dropped once its cursor has
// reached its drain point. It returns a reason to resume when the new
// feeds cannot be added.
func (w *Watcher) follow(ctx context.Context, ka *pb.WatchKeepaliveResponse) string {
	w.mu.Lock()
	id := w.id
	var add []string
	for _, sid := range ka.Shards {
		if w.shards[sid] == nil {
			add = append(add, sid)
		}
	}
	for sid, pos := range ka.DrainTo {
		if s := w.shards[sid]; s != nil {
			s.drainTo = max(pos, 1)
		}
	}
	w.mu.Unlock()
	w.dropDrained()
	if len(add) == 0 {
		return ""
	}
	req := w.scoped(&pb.WatchRequest{WatchId: id, Shards: add, Deliver: w.inbox})
	resp := &pb.WatchResponse{}
	if err := w.c.call(ctx, subjects.KVWatch, req, resp); err != nil {
		return fmt.Sprintf("adding shard(s) %v to the watch: %v", add, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.id != id {
		return ""
	}
	// Until the new feed's first event, a resume must start it where
	// this one started: the stream's start.
	start := "0-" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	for sid := range resp.Cursors {
		if w.shards[sid] == nil {
			w.shards[sid] = &shardFeed{cursor: start, heard: time.Now(), initial: true}
		}
	}
	return ""
}

// dropDrained drops the shards a move removed whose feeds have delivered
// everything up to their drain point, and ends those feeds.
func (w *Watcher) dropDrained() {
	w.mu.Lock()
	id := w.id
	var done []string
	for sid, s := range w.shards {
		if s.drainTo > 0 && cursorSeq(s.cursor) >= s.drainTo && s.initial {
			done = append(done, sid)
			delete(w.shards, sid)
		}
	}
	w.mu.Unlock()
	if len(done) == 0 {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = w.c.call(ctx, subjects.KVWatchCancel, &pb.WatchCancelRequest{WatchId: id, Shards: done}, &pb.WatchCancelResponse{})
	}()
}

// cursorSeq is the stream position in a cursor ("<seq>-<unix_ms>", API.md
// "Watch"); 0 for one it cannot read.
func cursorSeq(c string) uint64 {
	a, _, _ := strings.Cut(c, "-")
	n, _ := strconv.ParseUint(a, 10, 64)
	return n
}
