package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/latchkey/latchkey/kit/watchspec"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/latchkey/latchkey/tests/suite"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
)

// next reads one event or fails the test after d.
func next(t *testing.T, w *client.Watcher, d time.Duration) client.Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watch closed: %v", w.Err())
		}
		return ev
	case <-time.After(d):
		t.Fatalf("no watch event within %s (%d resumes so far)", d, w.Resumes())
	}
	return client.Event{}
}

// TestWatchEventsInitialAndResume walks the feed through its event types:
// an initial snapshot then INITIAL_DONE, puts, deletes and a server TTL
// expiry in revision order, then a resume from saved cursors that delivers
// the latest state of every key changed meanwhile (a delete and an expiry
// included) and nothing twice.
func TestWatchEventsInitialAndResume(t *testing.T) {
	e := newKVEnv(t)
	ctx := testCtx(t)
	r1, err := e.c.Put(ctx, "w:a", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Put(ctx, "other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	w, err := e.c.Watch(ctx, "w:", client.WatchInitial())
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(t, w, 5*time.Second); ev.Type != client.EventPut || ev.Key != "w:a" || ev.Revision != r1 || string(ev.Value) != "1" {
		t.Fatalf("initial event %+v, want put w:a at %d", ev, r1)
	}
	if ev := next(t, w, 5*time.Second); ev.Type != client.EventInitialDone {
		t.Fatalf("got %+v, want initial_done", ev)
	}
	// A write that failed would make its event's absence look like the
	// feed's fault: say so instead.
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	r2, err := e.c.Put(ctx, "w:a", []byte("2"))
	must("put w:a", err)
	_, r3, err := e.c.Delete(ctx, "w:a")
	must("delete w:a", err)
	rt, err := e.c.Put(ctx, "w:ttl", []byte("t"), client.WithTTL(time.Second))
	must("put w:ttl", err)
	_, err = e.c.Put(ctx, "other", []byte("y")) // not matching: never delivered
	must("put other", err)
	// Per key in revision order; across keys (shards) in no order.
	byKey := map[string][]client.Event{}
	// A lost event is noticed at the next heartbeat (2-3 s) and the client
	// resumes, so on a busy machine an event may take several seconds:
	// what this test checks is that each one comes, not how soon.
	for i := range 4 { // put and delete of w:a, put and expiry of w:ttl (1-2 s later)
		t.Logf("waiting for event %d of 4; so far %+v", i+1, byKey)
		ev := next(t, w, 15*time.Second)
		byKey[ev.Key] = append(byKey[ev.Key], ev)
	}
	if a := byKey["w:a"]; len(a) != 2 || a[0].Type != client.EventPut || a[0].Revision != r2 || a[1].Type != client.EventDelete || a[1].Revision != r3 {
		t.Fatalf("w:a events %+v, want put@%d then delete@%d", a, r2, r3)
	}
	if x := byKey["w:ttl"]; len(x) != 2 || x[0].Type != client.EventPut || x[0].Revision != rt || x[1].Type != client.EventExpire || x[1].Revision <= rt {
		t.Fatalf("w:ttl events %+v, want put@%d then the server's expiry", x, rt)
	}
	if len(byKey) != 2 {
		t.Fatalf("events of other keys: %v", byKey)
	}
	cursors := w.Cursors()
	w.Stop()
	if !errors.Is(w.Err(), client.ErrWatchClosed) {
		t.Fatalf("Err after Stop = %v, want ErrWatchClosed", w.Err())
	}

	// Changes while nobody watches: a key written twice (only its latest
	// version must come), one deleted, one expiring.
	_, _ = e.c.Put(ctx, "w:b", []byte("b1"))
	rb, _ := e.c.Put(ctx, "w:b", []byte("b2"))
	rc, _ := e.c.Put(ctx, "w:c", []byte("c"))
	_, rcd, _ := e.c.Delete(ctx, "w:c")
	re, _ := e.c.Put(ctx, "w:e", []byte("e"), client.WithTTL(time.Second))
	_ = rc
	time.Sleep(2500 * time.Millisecond) // w:e expires on the server
	w2, err := e.c.Watch(ctx, "w:", client.WatchFrom(cursors))
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Stop()
	got := map[string]client.Event{}
	for len(got) < 3 {
		ev := next(t, w2, 15*time.Second)
		if _, dup := got[ev.Key]; dup {
			t.Fatalf("key %s delivered twice after a resume: %+v", ev.Key, ev)
		}
		got[ev.Key] = ev
	}
	if ev := got["w:b"]; ev.Type != client.EventPut || ev.Revision != rb || string(ev.Value) != "b2" {
		t.Fatalf("w:b after resume: %+v, want put at %d", ev, rb)
	}
	if ev := got["w:c"]; ev.Type != client.EventDelete || ev.Revision != rcd {
		t.Fatalf("w:c after resume: %+v, want delete at %d", ev, rcd)
	}
	if ev := got["w:e"]; ev.Type != client.EventExpire || ev.Revision <= re {
		t.Fatalf("w:e after resume: %+v, want expire after %d", ev, re)
	}
	select {
	case ev := <-w2.Events():
		t.Fatalf("unexpected event after the catch-up: %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestWatchKeyAndRefusals: a watch of one key sees only it, and the
// contract's refusals carry their codes and reasons.
func TestWatchKeyAndRefusals(t *testing.T) {
	e := newKVEnv(t)
	ctx := testCtx(t)
	w, err := e.c.Watch(ctx, "k", client.WatchKey())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	_, _ = e.c.Put(ctx, "k2", []byte("no"))
	r, _ := e.c.Put(ctx, "k", []byte("yes"))
	if ev := next(t, w, 5*time.Second); ev.Key != "k" || ev.Revision != r {
		t.Fatalf("key watch got %+v", ev)
	}

	refuse := func(body string, code int, reason apierr.Reason) {
		t.Helper()
		reply, err := e.nc.Request("latchkey.kv.watch", []byte(body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := reply.Header.Get("Nats-Service-Error-Code"); got != fmt.Sprint(code) {
			t.Fatalf("%s: code %q (%s), want %d", body, got, reply.Data, code)
		}
		var eb pb.Error
		if err := protojson.Unmarshal(reply.Data, &eb); err != nil || eb.Reason != string(reason) {
			t.Fatalf("%s: body %s, want reason %s", body, reply.Data, reason)
		}
	}
	refuse(`{"prefix":"a","deliver":"$JS.API.STREAM.DELETE.KV_latchkey_shard_0"}`, 400, apierr.ReasonInvalidDeliver)
	refuse(`{"prefix":"a","deliver":"latchkey.kv.put"}`, 400, apierr.ReasonInvalidDeliver)
	refuse(`{"prefix":"a","deliver":"_INBOX.>"}`, 400, apierr.ReasonInvalidDeliver)
	refuse(`{"prefix":"a","deliver":""}`, 400, apierr.ReasonInvalidDeliver)
	refuse(`{"prefix":"a","key":"b","deliver":"_INBOX.x"}`, 400, apierr.ReasonPrefixAndKey)
	refuse(`{"initial":true,"cursors":{"0":"1-1"},"deliver":"_INBOX.x"}`, 400, apierr.ReasonInitialWithCursors)
	refuse(`{"cursors":{"0":"nonsense"},"deliver":"_INBOX.x"}`, 400, apierr.ReasonInvalidCursor)
	refuse(`{"cursors":{"77":"1-1"},"deliver":"_INBOX.x"}`, 400, apierr.ReasonUnknownShard)
	// A cursor older than CursorMaxAge may need expiry markers the server
	// has removed: 409. One just younger is accepted.
	old := watchspec.FormatCursor(1, time.Now().Add(-storage.CursorMaxAge-time.Minute).UnixMilli())
	refuse(`{"cursors":{"0":"`+old+`"},"deliver":"_INBOX.x"}`, 409, apierr.ReasonCursorExpired)
	// A cursor ahead of the stream comes from a recreated stream: 409 too.
	ahead := watchspec.FormatCursor(1<<40, time.Now().UnixMilli())
	refuse(`{"cursors":{"0":"`+ahead+`"},"deliver":"_INBOX.x"}`, 409, apierr.ReasonCursorExpired)
	young := watchspec.FormatCursor(1, time.Now().Add(-10*time.Minute).UnixMilli())
	var resp pb.WatchResponse
	reply, err := e.nc.Request("latchkey.kv.watch", []byte(`{"cursors":{"0":"`+young+`"},"deliver":"_INBOX.young"}`), 5*time.Second)
	if err != nil || reply.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("10-minute-old cursor refused: %v %s", err, reply.Data)
	}
	if err := protojson.Unmarshal(reply.Data, &resp); err != nil || resp.WatchId == "" || len(resp.Cursors) != 3 {
		t.Fatalf("watch response %s", reply.Data)
	}
	// keepalive of a gone watch is 404, cancel is always fine.
	reply, _ = e.nc.Request("latchkey.kv.watch.keepalive", []byte(`{"watch_id":"nosuchwatch"}`), 5*time.Second)
	if got := reply.Header.Get("Nats-Service-Error-Code"); got != "404" {
		t.Fatalf("keepalive of an unknown watch: %q %s", got, reply.Data)
	}
	reply, _ = e.nc.Request("latchkey.kv.watch.keepalive", []byte(`{"watch_id":"`+resp.WatchId+`"}`), 5*time.Second)
	if got := reply.Header.Get("Nats-Service-Error-Code"); got != "" {
		t.Fatalf("keepalive of a live watch: %q %s", got, reply.Data)
	}
	reply, _ = e.nc.Request("latchkey.kv.watch.cancel", []byte(`{"watch_id":"`+resp.WatchId+`"}`), 5*time.Second)
	if got := reply.Header.Get("Nats-Service-Error-Code"); got != "" {
		t.Fatalf("cancel: %q %s", got, reply.Data)
	}
	eventually(t, 5*time.Second, func() error {
		reply, _ = e.nc.Request("latchkey.kv.watch.keepalive", []byte(`{"watch_id":"`+resp.WatchId+`"}`), 5*time.Second)
		if got := reply.Header.Get("Nats-Service-Error-Code"); got != "404" {
			return fmt.Errorf("keepalive after cancel: %q", got)
		}
		return nil
	})
}

// TestWatchRawJSONHeartbeatsAndKeepaliveTimeout drives the wire protocol
// as the README's shell tour does: events in protojson on the inbox,
// heartbeats at least every 5 s carrying seq and cursor, and a watch
// without keepalives ends with CANCELLED keepalive_timeout.
func TestWatchRawJSONHeartbeatsAndKeepaliveTimeout(t *testing.T) {
	old := storage.WatchKeepalive
	storage.WatchKeepalive = 5 * time.Second // past the first heartbeats (2-3 s)
	t.Cleanup(func() { storage.WatchKeepalive = old })
	e := newKVEnv(t)
	inbox := nats.NewInbox()
	ch := make(chan *nats.Msg, 100)
	sub, _ := e.nc.ChanSubscribe(inbox, ch)
	defer sub.Unsubscribe()
	reply, err := e.nc.Request("latchkey.kv.watch", []byte(`{"prefix":"j:","deliver":"`+inbox+`"}`), 5*time.Second)
	if err != nil || reply.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("watch: %v %s", err, reply.Data)
	}
	_, _ = client.New(e.nc).Put(testCtx(t), "j:1", []byte("v"))
	var put, hb, cancelled int
	heartbeatShards := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for cancelled < 3 {
		select {
		case m := <-ch:
			if !json.Valid(m.Data) {
				t.Fatalf("event is not JSON: %q", m.Data)
			}
			var ev pb.WatchEvent
			if err := protojson.Unmarshal(m.Data, &ev); err != nil {
				t.Fatal(err)
			}
			switch ev.Type {
			case pb.WatchEventType_WATCH_EVENT_TYPE_PUT:
				put++
				if ev.Seq != 1 || ev.Key != "j:1" || string(ev.Value) != "v" {
					t.Fatalf("put event %s", m.Data)
				}
			case pb.WatchEventType_WATCH_EVENT_TYPE_HEARTBEAT:
				hb++
				heartbeatShards[ev.Shard] = true
				if ev.Cursor == "" {
					t.Fatalf("heartbeat without cursor: %s", m.Data)
				}
			case pb.WatchEventType_WATCH_EVENT_TYPE_CANCELLED:
				cancelled++
				if !strings.HasPrefix(ev.Reason, string(apierr.ReasonKeepaliveTimeout)) {
					t.Fatalf("cancel reason %q", ev.Reason)
				}
			}
		case <-deadline:
			t.Fatalf("after 10 s: %d puts, %d heartbeats, %d cancelled; want every shard cancelled for lack of keepalives", put, hb, cancelled)
		}
	}
	if put != 1 || len(heartbeatShards) != 3 {
		t.Fatalf("%d puts (want 1), heartbeats from %d shards (want 3)", put, len(heartbeatShards))
	}
}

// TestWatchEventConnectionPermissions runs storage with its event
// connection logged in as a user that may publish only to _INBOX.>: the
// watch works, and that connection cannot publish to $JS.API.> (the
// server refuses with a permissions violation).
func TestWatchEventConnectionPermissions(t *testing.T) {
	users, noAuth := natstest.WatchUsers("s3cret")
	srv, err := natstest.Start(natstest.Options{StoreDir: t.TempDir(), Name: "perm", Users: users, NoAuthUser: noAuth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc := natstest.Connect(t, srv.ClientURL())
	violations := make(chan error, 10)
	ev := natstest.Connect(t, srv.ClientURL(), nats.UserInfo(natstest.EventsUser, "s3cret"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	suite.New(t, nc, suite.Options{Shards: 3, EventConn: ev})
	c := client.New(nc)
	ctx := testCtx(t)
	w, err := c.Watch(ctx, "p:")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	r, _ := c.Put(ctx, "p:1", []byte("x"))
	if got := next(t, w, 5*time.Second); got.Revision != r {
		t.Fatalf("event %+v, want revision %d", got, r)
	}
	if err := ev.Publish("$JS.API.STREAM.DELETE.KV_latchkey_shard_0", nil); err != nil {
		t.Fatal(err)
	}
	_ = ev.Flush()
	select {
	case err := <-violations:
		if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("error %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publishing to $JS.API on the event connection was not refused")
	}
	// The stream is still there.
	if _, err := c.Get(ctx, "p:1"); err != nil {
		t.Fatal(err)
	}
}

// TestWatchSlowConsumerIsCancelledAndResumes: a reader that stops reading
// while keys change lets its acknowledged seq fall behind; the server
// cancels its feed with reason slow_consumer instead of queueing, and once
// the reader reads again the watcher has resumed and delivers every key's
// final state.
func TestWatchSlowConsumerIsCancelledAndResumes(t *testing.T) {
	old := storage.WatchMaxUnacked
	storage.WatchMaxUnacked = 100
	t.Cleanup(func() { storage.WatchMaxUnacked = old })
	e := newKVEnv(t)
	ctx := testCtx(t)
	before := cancelledMetric(t, string(apierr.ReasonSlowConsumer))
	w, err := e.c.Watch(ctx, "s:", client.WatchKeepaliveInterval(200*time.Millisecond), client.WatchBuffer(64))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	final := map[string]uint64{}
	for i := range 1500 {
		k := fmt.Sprintf("s:%d", i%50)
		r, err := e.c.Put(ctx, k, fmt.Appendf(nil, "%d", i))
		if err != nil {
			t.Fatal(err)
		}
		final[k] = r
	}
	time.Sleep(time.Second) // keepalives report the reader stuck
	if got := cancelledMetric(t, string(apierr.ReasonSlowConsumer)); got <= before {
		t.Fatalf("no slow_consumer cancellation (metric %v -> %v)", before, got)
	}
	last := map[string]uint64{}
	deadline := time.After(15 * time.Second)
	for done := 0; done < len(final); {
		select {
		case ev := <-w.Events():
			if ev.Revision <= last[ev.Key] {
				t.Fatalf("%s: revision %d after %d", ev.Key, ev.Revision, last[ev.Key])
			}
			last[ev.Key] = ev.Revision
			if ev.Revision == final[ev.Key] {
				done++
			}
		case <-deadline:
			t.Fatalf("after reading again, %d of %d keys reached their final revision; resumes %d", done, len(final), w.Resumes())
		}
	}
	if w.Resumes() == 0 {
		t.Fatal("the watcher never resumed")
	}
	t.Logf("resumes %d, cancellations seen by the client %d", w.Resumes(), w.Cancellations())
}

// cancelledMetric reads latchkey_watch_cancelled_total for reason, summed
// over shards.
func cancelledMetric(t *testing.T, reason string) float64 {
	t.Helper()
	mfs, err := telemetry.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "latchkey_watch_cancelled_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// TestWatchInitialLargerThanTheQueueBound: an initial snapshot (or a
// resume's catch-up) of more keys than a feed may queue is not a slow
// consumer: it shares the view's memory and is exempt from the bound
// until drained, so a big prefix can be watched with initial.
func TestWatchInitialLargerThanTheQueueBound(t *testing.T) {
	old := storage.WatchMaxQueue
	storage.WatchMaxQueue = 20
	t.Cleanup(func() { storage.WatchMaxQueue = old })
	e := newKVEnv(t)
	ctx := testCtx(t)
	const n = 300
	for i := range n {
		if _, err := e.c.Put(ctx, fmt.Sprintf("big:%03d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	w, err := e.c.Watch(ctx, "big:", client.WatchInitial())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	seen := map[string]bool{}
	for {
		ev := next(t, w, 10*time.Second)
		if ev.Type == client.EventInitialDone {
			break
		}
		seen[ev.Key] = true
	}
	if len(seen) != n || w.Resumes() != 0 {
		t.Fatalf("initial snapshot: %d of %d keys, %d resumes (want none)", len(seen), n, w.Resumes())
	}
}

// TestWatchInterruptedInitialContinues: a reader too slow for its buffer
// during the initial snapshot loses events; the watcher continues the
// snapshot from its cursors (it does not start over, which could repeat
// for ever) and still delivers every key, then EventInitialDone once.
func TestWatchInterruptedInitialContinues(t *testing.T) {
	e := newKVEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 600
	for i := range n {
		if _, err := e.c.Put(ctx, fmt.Sprintf("init:%03d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	w, err := e.c.Watch(ctx, "init:", client.WatchInitial(), client.WatchBuffer(64))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	seen := map[string]bool{}
	for {
		ev := next(t, w, 15*time.Second)
		if ev.Type == client.EventInitialDone {
			break
		}
		if ev.Type == client.EventPut {
			seen[ev.Key] = true
		}
		if len(seen) < 20 {
			time.Sleep(20 * time.Millisecond) // fall behind early
		}
	}
	if len(seen) != n {
		t.Fatalf("initial snapshot: %d of %d keys before initial_done (resumes %d)", len(seen), n, w.Resumes())
	}
	if w.Resumes() == 0 {
		t.Fatal("the reader never fell behind: the test did not interrupt the snapshot")
	}
	t.Logf("resumes %d", w.Resumes())
	select {
	case ev := <-w.Events():
		if ev.Type == client.EventInitialDone {
			t.Fatal("initial_done delivered twice")
		}
	case <-time.After(300 * time.Millisecond):
	}
}
