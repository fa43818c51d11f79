package storage

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/codec"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/latchkey/latchkey/kit/watchspec"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
)

// The change feed (docs/ARCHITECTURE.md, "Watch").
//
// Every storage instance already applies every message of its shards in
// stream order to its view; the hub of a shard sees each message right
// after the view applied it (observe) and fans it out to the feeds (one
// per watch) whose prefix matches. No JetStream consumer is opened per
// watcher. A feed's position is a stream sequence, the same on every
// instance of the shard, so a cursor handed out by one instance resumes on
// another.

// OpWatch is the shard operation that starts one shard's feed of a watch.
const OpWatch = watchspec.OpWatch

// Watch limits. They are variables so that tests can shrink them.
var (
	// WatchHeartbeat is how long a feed stays silent before it sends a
	// heartbeat (the contract allows at most 5 s).
	WatchHeartbeat = 2 * time.Second
	// WatchKeepalive is how long a feed lives without a keepalive.
	WatchKeepalive = 30 * time.Second
	// WatchMaxQueue bounds the events a feed holds that are not yet
	// published; past it the feed is cancelled (slow_consumer).
	WatchMaxQueue = 8192
	// WatchMaxQueueBytes bounds the same queue in bytes.
	WatchMaxQueueBytes = 16 << 20
	// WatchMaxUnacked bounds how far a feed runs ahead of the seq its
	// client acknowledged in keepalives (only once the client acked).
	WatchMaxUnacked uint64 = 50000
	// CursorMaxAge is the age (by the server's clock stamp on the stream
	// message at the cursor) past which a cursor is refused with 409
	// cursor_expired. Expiry markers live LimitMarkerTTL (15 min); a
	// cursor younger than 14 min can only need markers written after it,
	// which still exist, so no expiry is ever skipped. The contract
	// promises 10 min; the last minute is slack for clock differences.
	CursorMaxAge = LimitMarkerTTL - time.Minute
)

// Watch metrics, per shard, on telemetry.Registry.
var (
	watchFeeds = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "latchkey_watch_feeds",
		Help: "Watch feeds (one per watch and shard) served by this process, by shard.",
	}, []string{"shard"})
	watchEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_watch_events_total",
		Help: "Watch events published, by shard and type (put, delete, expire, heartbeat, initial_done, cancelled).",
	}, []string{"shard", "type"})
	watchCancelled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_watch_cancelled_total",
		Help: "Watch feeds ended by the server, by shard and reason (slow_consumer, keepalive_timeout, client_cancel, event_connection, shutting_down).",
	}, []string{"shard", "reason"})
	watchLag = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "latchkey_watch_lag_seconds",
		Help:    "From the server's timestamp of a stream message to the publish of its watch event, by shard.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"shard"})
)

func init() { telemetry.Registry.MustRegister(watchFeeds, watchEvents, watchCancelled, watchLag) }

// watchHub fans one shard's applied messages out to its feeds.
type watchHub struct {
	sh  *shard
	pub *nats.Conn // the event connection; nil = this instance serves no watches

	mu      sync.Mutex
	pos     uint64 // last stream sequence observed
	posTime int64  // server timestamp (unix ms) of the message at pos
	// expired holds the keys whose current message is the server's expiry
	// marker (key -> its sequence): the view keeps tombstones without
	// saying why, and a resume must tell deletes from expiries.
	expired map[string]uint64
	// moveWrites holds the keys whose current message a move of the shard
	// set wrote without changing the key (key -> its sequence): a copy
	// from the key's old shard, or a tombstone the mover left on a shard
	// about to receive the key. Neither is an event, live or in a resume's
	// catch-up; the view does not say which entries they are.
	moveWrites map[string]uint64
	feeds      map[string]*feed
	closed     bool
}

func newWatchHub(sh *shard, pub *nats.Conn) *watchHub {
	return &watchHub{sh: sh, pub: pub, expired: map[string]uint64{}, moveWrites: map[string]uint64{}, feeds: map[string]*feed{}}
}

// isMoveWrite reports a message a move wrote to hand a key over (copy,
// moved marker, or the tombstone shardfmt.HeaderMoveTombstone marks): it
// changes where the key lives, not the key, so it is no watch event
// (docs/API.md, "Watch").
func isMoveWrite(hdr nats.Header) bool {
	return shardfmt.MovedTo(hdr) != "" || hdr.Get(hdrRevision) != "" || hdr.Get(shardfmt.HeaderMoveTombstone) != ""
}

// observe is called by the shard for every message its view applied, in
// stream order.
func (h *watchHub) observe(key string, isKey bool, seq, rev uint64, ts time.Time, hdr nats.Header, data []byte) {
	typ := pb.WatchEventType_WATCH_EVENT_TYPE_PUT
	if hdr.Get(jskv.HeaderMarkerReason) != "" {
		typ = pb.WatchEventType_WATCH_EVENT_TYPE_EXPIRE
	} else if jskv.IsDeleteMarker(hdr) {
		typ = pb.WatchEventType_WATCH_EVENT_TYPE_DELETE
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if isKey {
		if typ == pb.WatchEventType_WATCH_EVENT_TYPE_EXPIRE {
			if old, ok := h.expired[key]; !ok || old < seq {
				h.expired[key] = seq
			}
		} else if old, ok := h.expired[key]; ok && old < seq {
			delete(h.expired, key)
		}
		// Markers need no entry here: the view marks them (entry.moved).
		if shardfmt.MovedTo(hdr) == "" && isMoveWrite(hdr) {
			if old, ok := h.moveWrites[key]; !ok || old < seq {
				h.moveWrites[key] = seq
			}
		} else if old, ok := h.moveWrites[key]; ok && old < seq {
			delete(h.moveWrites, key)
		}
	}
	if seq <= h.pos {
		return // a redelivery after a consumer restart
	}
	h.pos, h.posTime = seq, ts.UnixMilli()
	if !isKey || len(h.feeds) == 0 || isMoveWrite(hdr) {
		return
	}
	cursor := watchspec.FormatCursor(seq, h.posTime)
	for _, f := range h.feeds {
		if !f.matches(key) {
			continue
		}
		ev := &pb.WatchEvent{Type: typ, Key: key, Revision: rev, Cursor: cursor}
		if typ == pb.WatchEventType_WATCH_EVENT_TYPE_PUT {
			ev.Value = data // never modified by the consumer once delivered
		}
		f.enqueue(ev, ts)
	}
}

// cursor returns the hub's position as a cursor.
func (h *watchHub) cursorLocked() string { return watchspec.FormatCursor(h.pos, h.posTime) }

// feed is one (watch, shard): its queue of events not yet published and
// the goroutine that publishes them.
type feed struct {
	id, shard   string
	prefix, key string
	deliver     string
	json        bool
	hub         *watchHub

	mu     sync.Mutex
	queue  []queued
	qbytes int
	// allowance lets the start's replay (initial snapshot or catch-up)
	// exceed the queue bound until it is drained: its events share the
	// view's memory, and bounding it would cancel every watch of a prefix
	// with more keys than the bound. replayEnd is its last seq; the ack
	// window counts from there.
	allowance int
	replayEnd uint64
	seq       uint64 // last seq assigned
	acked     uint64
	hasAcked  bool
	keepalive time.Time
	inflight  bool
	ending    apierr.Reason // reason the feed ends; "" while it runs
	wake      chan struct{}
	stopped   chan struct{}
}

type queued struct {
	ev *pb.WatchEvent
	ts time.Time // server time of the message (zero for synthetic events)
}

func (f *feed) matches(key string) bool {
	if f.key != "" {
		return key == f.key
	}
	return strings.HasPrefix(key, f.prefix)
}

// enqueue adds an event (caller holds the hub's lock, which orders
// enqueues with observe). A queue past its bounds ends the feed.
func (f *feed) enqueue(ev *pb.WatchEvent, ts time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ending != "" {
		return
	}
	f.seq++
	ev.WatchId, ev.Shard, ev.Seq = f.id, f.shard, f.seq
	f.queue = append(f.queue, queued{ev: ev, ts: ts})
	f.qbytes += len(ev.Key) + len(ev.Value) + 64
	switch {
	case len(f.queue) > WatchMaxQueue+f.allowance || f.qbytes > WatchMaxQueueBytes:
		f.endLocked(apierr.ReasonSlowConsumer, fmt.Sprintf("%s: %d events (%d bytes) queued for publishing", apierr.ReasonSlowConsumer, len(f.queue), f.qbytes))
	default:
		f.checkAckedLocked()
	}
	f.signal()
}

// replay queues an event of the start's snapshot or catch-up, outside the
// queue's bounds (see allowance).
func (f *feed) replay(ev *pb.WatchEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	ev.WatchId, ev.Shard, ev.Seq = f.id, f.shard, f.seq
	f.queue = append(f.queue, queued{ev: ev})
	f.allowance++
	f.replayEnd = f.seq
}

// checkAckedLocked ends a feed that runs too far ahead of what its client
// acknowledged, counting from the end of the replay.
func (f *feed) checkAckedLocked() {
	if !f.hasAcked || f.ending != "" {
		return
	}
	from := max(f.acked, f.replayEnd)
	if f.seq > from && f.seq-from > WatchMaxUnacked {
		f.endLocked(apierr.ReasonSlowConsumer, fmt.Sprintf("%s: %d events sent past the last acknowledged seq %d", apierr.ReasonSlowConsumer, f.seq-f.acked, f.acked))
	}
}

func (f *feed) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// endLocked ends the feed: what is queued is dropped (the client resumes
// from its cursor anyway) and one CANCELLED event is sent last.
func (f *feed) endLocked(kind apierr.Reason, reason string) {
	if f.ending != "" {
		return
	}
	f.ending = kind
	f.queue = f.queue[:0]
	f.qbytes = 0
	f.seq++
	f.queue = append(f.queue, queued{ev: &pb.WatchEvent{WatchId: f.id, Shard: f.shard, Seq: f.seq,
		Type: pb.WatchEventType_WATCH_EVENT_TYPE_CANCELLED, Reason: reason}})
	watchCancelled.WithLabelValues(f.shard, string(kind)).Inc()
	f.signal()
}

func (f *feed) end(kind apierr.Reason, reason string) {
	f.mu.Lock()
	f.endLocked(kind, reason)
	f.mu.Unlock()
}

// touch records a keepalive and the client's acknowledged seq.
func (f *feed) touch(acked uint64, hasAck bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keepalive = time.Now()
	if hasAck && acked > f.acked {
		f.acked, f.hasAcked = acked, true
	}
	f.checkAckedLocked()
}

// run publishes the feed's events and its heartbeats until it ends.
func (f *feed) run() {
	defer close(f.stopped)
	h := f.hub
	defer func() {
		h.mu.Lock()
		if h.feeds[f.id] == f {
			delete(h.feeds, f.id)
		}
		h.mu.Unlock()
		watchFeeds.WithLabelValues(f.shard).Dec()
	}()
	// Half the heartbeat interval: heartbeats leave 2-3 s after the last
	// event (the contract allows 5 s) at two wake-ups a second per idle feed.
	tick := time.NewTicker(WatchHeartbeat / 2)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-f.wake:
		case <-tick.C:
		}
		f.mu.Lock()
		batch := f.queue
		replayed := f.allowance > 0
		f.queue, f.qbytes, f.allowance = nil, 0, 0
		f.inflight = len(batch) > 0
		ending := f.ending
		idle := time.Since(f.keepalive)
		f.mu.Unlock()
		for _, q := range batch {
			if err := f.publish(q.ev); err != nil {
				f.end(apierr.ReasonEventConnection, string(apierr.ReasonEventConnection)+": "+err.Error())
				break
			}
			if !q.ts.IsZero() {
				watchLag.WithLabelValues(f.shard).Observe(time.Since(q.ts).Seconds())
			}
			last = time.Now()
			if q.ev.Type == pb.WatchEventType_WATCH_EVENT_TYPE_CANCELLED {
				return
			}
		}
		f.mu.Lock()
		f.inflight = false
		f.mu.Unlock()
		if ending != "" {
			continue // the CANCELLED event is queued and goes out next round
		}
		if idle > WatchKeepalive {
			f.end(apierr.ReasonKeepaliveTimeout, fmt.Sprintf("%s: no keepalive for %s", apierr.ReasonKeepaliveTimeout, idle.Round(time.Second)))
			continue
		}
		// A heartbeat right after a replay (snapshot or catch-up): a client
		// that lost its tail learns it now, not a heartbeat interval later.
		if replayed || time.Since(last) >= WatchHeartbeat {
			if f.heartbeat() {
				last = time.Now()
			}
		}
	}
}

// heartbeat publishes the feed's last seq and the hub's position, if
// every event up to that position has been published.
func (f *feed) heartbeat() bool {
	h := f.hub
	h.mu.Lock()
	f.mu.Lock()
	if len(f.queue) > 0 || f.inflight || f.ending != "" {
		f.mu.Unlock()
		h.mu.Unlock()
		return false
	}
	ev := &pb.WatchEvent{WatchId: f.id, Shard: f.shard, Seq: f.seq, Type: pb.WatchEventType_WATCH_EVENT_TYPE_HEARTBEAT, Cursor: h.cursorLocked()}
	f.mu.Unlock()
	h.mu.Unlock()
	return f.publish(ev) == nil
}

func (f *feed) publish(ev *pb.WatchEvent) error {
	data, err := codec.Encode(ev, f.json)
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: f.deliver, Data: data}
	if f.json {
		msg.Header = nats.Header{"Content-Type": []string{codec.ContentTypeJSON}}
	}
	if err := f.hub.pub.PublishMsg(msg); err != nil {
		return err
	}
	watchEvents.WithLabelValues(f.shard, eventTypeLabel(ev.Type)).Inc()
	return nil
}

func eventTypeLabel(t pb.WatchEventType) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "WATCH_EVENT_TYPE_"))
}

// startFeed starts one shard's feed of a watch: after a barrier (so the
// feed starts after every write acknowledged before the request), under
// the hub's lock, it queues the initial snapshot or the catch-up from the
// cursor, then registers the feed for live events.
func (sh *shard) startFeed(ctx context.Context, r *pb.ShardWatchRequest) (*pb.ShardWatchResponse, error) {
	h := sh.feed
	if !watchspec.ValidWatchID(r.WatchId) {
		return nil, apierr.Errorf(apierr.ReasonInvalidWatchID, "watch_id %q must be 1-64 characters of [A-Za-z0-9_-]", r.WatchId)
	}
	if err := watchspec.ValidDeliver(r.Deliver); err != nil {
		return nil, err
	}
	if r.Key != "" && r.Prefix != "" {
		return nil, apierr.Errorf(apierr.ReasonPrefixAndKey, "a watch takes a prefix or a key, not both")
	}
	if r.Initial && r.Cursor != "" {
		return nil, apierr.Errorf(apierr.ReasonInitialWithCursors, "initial and cursors exclude each other: a resume continues, initial starts over")
	}
	var from uint64
	if r.Cursor != "" {
		seq, ms, err := watchspec.ParseCursor(r.Cursor)
		if err != nil {
			return nil, err
		}
		if age := time.Since(time.UnixMilli(ms)); age > CursorMaxAge {
			return nil, apierr.Errorf(apierr.ReasonCursorExpired,
				"shard %s: cursor %s is %s old; cursors older than %s may need expiry markers the server has removed: start again with initial",
				sh.id, r.Cursor, age.Round(time.Second), CursorMaxAge)
		}
		from = seq
	}
	if err := sh.sync(ctx); err != nil {
		return nil, err
	}
	f := &feed{id: r.WatchId, shard: sh.id, prefix: r.Prefix, key: r.Key, deliver: r.Deliver, json: r.Json,
		hub: h, keepalive: time.Now(), wake: make(chan struct{}, 1), stopped: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if applied := sh.view.appliedSeq(); from > applied {
		// After the barrier the view has passed every position any
		// instance could have handed out (the view, not the hub: the hub
		// may not have observed the barrier itself yet): this cursor is
		// from another stream (the shard's bucket was recreated).
		// Revisions restarted, so the client must re-read, not resume.
		return nil, apierr.Errorf(apierr.ReasonCursorExpired,
			"shard %s: cursor %s is ahead of the shard's stream (at %d): the stream was recreated; start again with initial", sh.id, r.Cursor, applied)
	}
	if h.closed {
		return nil, apierr.Errorf(apierr.ReasonShuttingDown, "shard %s: this storage instance is stopping", sh.id)
	}
	if old, ok := h.feeds[f.id]; ok {
		old.end(apierr.ReasonClientCancel, "replaced: a watch with this id started again")
	}
	// What a catch-up leaves out: a move's messages (the copy of a key a
	// watcher saw on its old shard, markers, the mover's tombstones) and
	// orphans (never served). A continued initial snapshot keeps copies:
	// there they are the key's state, not a change.
	skip := func(e entry) bool {
		if e.orphan || e.moved {
			return true
		}
		return !r.CatchUpDone && h.moveWrites[string(e.key())] == e.seq
	}
	switch {
	case r.Initial:
		for _, e := range sh.view.changedSince(f, 0, true, func(e entry) bool { return e.orphan }) {
			f.replay(&pb.WatchEvent{Type: pb.WatchEventType_WATCH_EVENT_TYPE_PUT, Key: string(e.key()), Value: e.value(),
				Revision: e.rev, Cursor: watchspec.FormatCursor(e.seq, h.posTime)})
		}
		f.replay(&pb.WatchEvent{Type: pb.WatchEventType_WATCH_EVENT_TYPE_INITIAL_DONE, Cursor: h.cursorLocked()})
	case r.Cursor != "":
		_, ms, _ := watchspec.ParseCursor(r.Cursor)
		for _, e := range sh.view.changedSince(f, from, false, skip) {
			ev := &pb.WatchEvent{Key: string(e.key()), Revision: e.rev, Cursor: watchspec.FormatCursor(e.seq, ms)}
			switch {
			case e.live:
				ev.Type, ev.Value = pb.WatchEventType_WATCH_EVENT_TYPE_PUT, e.value()
			case h.expired[ev.Key] == e.seq:
				ev.Type = pb.WatchEventType_WATCH_EVENT_TYPE_EXPIRE
			default:
				ev.Type = pb.WatchEventType_WATCH_EVENT_TYPE_DELETE
			}
			f.replay(ev)
		}
	}
	if r.CatchUpDone && !r.Initial {
		f.replay(&pb.WatchEvent{Type: pb.WatchEventType_WATCH_EVENT_TYPE_INITIAL_DONE, Cursor: h.cursorLocked()})
	}
	h.feeds[f.id] = f
	watchFeeds.WithLabelValues(sh.id).Inc()
	go f.run()
	return &pb.ShardWatchResponse{Cursor: h.cursorLocked()}, nil
}

// changedSince returns the view's entries matching f with a sequence above
// from, in sequence order, that skip does not leave out: live ones only
// for an initial snapshot, live ones and tombstones for a resume. The view
// keeps one entry per key, so a resume delivers each changed key's latest
// state (intermediate versions are compacted, deletes and expiries are
// kept as tombstones). skip runs under the view's lock (the caller holds
// the hub's, which observe takes after the view's, never inside it).
func (v *view) changedSince(f *feed, from uint64, liveOnly bool, skip func(entry) bool) []entry {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var out []entry
	visit := func(e entry) bool {
		if f.key == "" && !bytes.HasPrefix(e.key(), []byte(f.prefix)) {
			return false
		}
		if e.seq > from && (e.live || !liveOnly) && !skip(e) {
			out = append(out, e)
		}
		return f.key == ""
	}
	start := f.prefix
	if f.key != "" {
		start = f.key
		if e, ok := v.tree.Get(probe(start)); ok {
			visit(e)
		}
	} else {
		v.tree.AscendGreaterOrEqual(probe(start), visit)
	}
	slices.SortFunc(out, func(a, b entry) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	return out
}

func (h *watchHub) close() {
	h.mu.Lock()
	h.closed = true
	feeds := make([]*feed, 0, len(h.feeds))
	for _, f := range h.feeds {
		feeds = append(feeds, f)
	}
	h.mu.Unlock()
	for _, f := range feeds {
		f.end(apierr.ReasonShuttingDown, string(apierr.ReasonShuttingDown)+": the storage instance serving this shard stopped; resume from your cursors")
	}
	// One second for all of them to publish their CANCELLED: a stop must
	// not take a second per feed.
	deadline := time.After(time.Second)
	for _, f := range feeds {
		select {
		case <-f.stopped:
		case <-deadline:
			return
		}
	}
}

func (h *watchHub) lookup(id string) *feed {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.feeds[id]
}

// watchEndpoint serves latchkey.shard.<id>.watch in the shard's queue
// group: one instance of the shard takes each (watch, shard).
func (sh *shard) watchEndpoint(subj subjects.Set) service.Endpoint {
	return service.Endpoint{
		Name:       "shard-" + sh.id + "-" + OpWatch,
		Subject:    subj.Shard(sh.id, OpWatch),
		QueueGroup: "latchkey-shard-" + sh.id,
		Func: sh.instrument(OpWatch, func(ctx context.Context, req *service.Request) (proto.Message, error) {
			r := &pb.ShardWatchRequest{}
			if err := req.Decode(r); err != nil {
				return nil, err
			}
			return sh.startFeed(ctx, r)
		}),
	}
}

// watchControl serves the control subjects of the watches this instance
// feeds: <prefix>.watchctl.<watch_id>.keepalive and .cancel. Every
// instance subscribes (no queue group) and only the ones serving the watch
// answer, each naming its shards, so the router can tell a watch some of
// whose feeds are gone.
type watchControl struct {
	shards []*shard
	sub    *nats.Subscription
	nc     *nats.Conn
}

func startWatchControl(nc *nats.Conn, subj subjects.Set, shards []*shard) (*watchControl, error) {
	wc := &watchControl{shards: shards, nc: nc}
	sub, err := nc.Subscribe(subj.WatchControl("*", "*"), wc.handle)
	if err != nil {
		return nil, err
	}
	wc.sub = sub
	return wc, nil
}

func (wc *watchControl) handle(m *nats.Msg) {
	toks := strings.Split(m.Subject, ".")
	if len(toks) < 3 {
		return
	}
	id, op := toks[len(toks)-2], toks[len(toks)-1]
	asJSON := codec.IsJSON(m.Header, m.Data)
	var served []string
	switch op {
	case subjects.WatchOpKeepalive:
		r := &pb.WatchKeepaliveRequest{}
		if codec.Decode(m.Data, asJSON, r) != nil {
			return
		}
		for _, sh := range wc.shards {
			if f := sh.feed.lookup(id); f != nil {
				a, ok := r.Acked[sh.id]
				f.touch(a, ok)
				served = append(served, sh.id)
			}
		}
	case subjects.WatchOpCancel:
		r := &pb.WatchCancelRequest{}
		if codec.Decode(m.Data, asJSON, r) != nil {
			return
		}
		for _, sh := range wc.shards {
			if len(r.Shards) > 0 && !slices.Contains(r.Shards, sh.id) {
				continue // only some shards' feeds end (a drained shard)
			}
			if f := sh.feed.lookup(id); f != nil {
				f.end(apierr.ReasonClientCancel, string(apierr.ReasonClientCancel)+": the watch was cancelled")
				served = append(served, sh.id)
			}
		}
	default:
		return
	}
	if len(served) == 0 || m.Reply == "" {
		return // another instance may serve it (the router counts shards), or nobody asked for an answer
	}
	data, _ := codec.Encode(&pb.ShardWatchKeepaliveResponse{Shards: served}, asJSON)
	_ = wc.nc.Publish(m.Reply, data)
}

func (wc *watchControl) stop() {
	if wc != nil && wc.sub != nil {
		_ = wc.sub.Unsubscribe()
	}
}
