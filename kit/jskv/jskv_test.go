package jskv_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestEncodeKeyRoundTrip(t *testing.T) {
	for _, name := range []string{"a", "user:42", "a.b.c", "*", ">", "with space", "ü/€/😀", "$KV.x"} {
		tok := jskv.EncodeKey(name)
		for _, r := range tok {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_'
			if !ok {
				t.Fatalf("EncodeKey(%q) = %q has %q, not a safe key character", name, tok, r)
			}
		}
		back, err := jskv.DecodeKey(tok)
		if err != nil || back != name {
			t.Fatalf("DecodeKey(EncodeKey(%q)) = %q, %v", name, back, err)
		}
	}
	if _, err := jskv.DecodeKey("not base64!"); err == nil {
		t.Fatal("DecodeKey accepted a non-base64 token")
	}
}

func TestTTLHeaderRoundsUp(t *testing.T) {
	for _, c := range []struct {
		ms   int64
		want string
	}{{0, "1s"}, {1, "1s"}, {1000, "1s"}, {1001, "2s"}, {1500, "2s"}, {2000, "2s"}, {59999, "60s"}} {
		if got := jskv.TTLHeader(c.ms); got != c.want {
			t.Errorf("TTLHeader(%d) = %q, want %q", c.ms, got, c.want)
		}
	}
}

func setup(t *testing.T) (*nats.Conn, jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	s := natstest.Server(t)
	nc := natstest.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t", History: 1, LimitMarkerTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, kv
}

func TestLeaderGetAndPublishIfLast(t *testing.T) {
	nc, js, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	subj := "$KV.t." + jskv.EncodeKey("a.b")

	if _, found, err := jskv.LeaderGet(ctx, nc, "KV_t", subj); err != nil || found {
		t.Fatalf("empty subject: found=%v err=%v", found, err)
	}
	hdr := nats.Header{"X-Test": {"1"}}
	seq, err := jskv.PublishIfLast(ctx, js, subj, []byte("v1"), hdr, 0)
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Get(jskv.HeaderExpectedLastSubjectSeq) != "" {
		t.Fatal("PublishIfLast modified the caller's header")
	}
	if _, err := jskv.PublishIfLast(ctx, js, subj, []byte("v2"), nil, 0); !errors.Is(err, jskv.ErrWrongLastSequence) {
		t.Fatalf("create over an existing message: err = %v, want ErrWrongLastSequence", err)
	}
	if _, err := jskv.PublishIfLast(ctx, js, subj, []byte("v2"), nil, seq+7); !errors.Is(err, jskv.ErrWrongLastSequence) {
		t.Fatalf("stale sequence: err = %v, want ErrWrongLastSequence", err)
	}
	m, found, err := jskv.LeaderGet(ctx, nc, "KV_t", subj)
	if err != nil || !found || m.Seq != seq || string(m.Data) != "v1" || m.Header.Get("X-Test") != "1" || jskv.IsDeleteMarker(m.Header) {
		t.Fatalf("LeaderGet = %+v, %v, %v; want seq %d v1 with header", m, found, err, seq)
	}
	// A delete marker with its own TTL: the server accepts it and the
	// reader sees a marker.
	del := nats.Header{jskv.HeaderKVOperation: {"DEL"}, jskv.HeaderTTL: {jskv.TTLHeader(1000)}}
	seq2, err := jskv.PublishIfLast(ctx, js, subj, nil, del, seq)
	if err != nil || seq2 <= seq {
		t.Fatalf("checked delete: seq %d err %v", seq2, err)
	}
	m, found, err = jskv.LeaderGet(ctx, nc, "KV_t", subj)
	if err != nil || !found || !jskv.IsDeleteMarker(m.Header) {
		t.Fatalf("after delete: %+v %v %v", m, found, err)
	}
	if _, _, err := jskv.LeaderGet(ctx, nc, "KV_nope", subj); !errors.Is(err, apierr.ErrUnavailable) {
		t.Fatalf("missing stream: err = %v, want 503", err)
	}
}

func TestTTLExpiryWritesMarker(t *testing.T) {
	nc, js, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	subj := "$KV.t.k"
	seq, err := jskv.PublishIfLast(ctx, js, subj, []byte("x"), nats.Header{jskv.HeaderTTL: {jskv.TTLHeader(1000)}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, found, err := jskv.LeaderGet(ctx, nc, "KV_t", subj)
		if err != nil {
			t.Fatal(err)
		}
		if found && m.Seq > seq {
			if !jskv.IsDeleteMarker(m.Header) {
				t.Fatalf("message after expiry is not a marker: %v", m.Header)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("message with a 1s TTL still there after 5s (found=%v)", found)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestIsDeleteMarker(t *testing.T) {
	for _, c := range []struct {
		h    nats.Header
		want bool
	}{
		{nil, false},
		{nats.Header{}, false},
		{nats.Header{"KV-Operation": {"DEL"}}, true},
		{nats.Header{"KV-Operation": {"PURGE"}}, true},
		{nats.Header{"Nats-Marker-Reason": {"MaxAge"}}, true},
		{nats.Header{"Nats-TTL": {"5s"}}, false},
	} {
		if got := jskv.IsDeleteMarker(c.h); got != c.want {
			t.Errorf("IsDeleteMarker(%v) = %v", c.h, got)
		}
	}
}

// TestSequenceSurvivesEmptyStreamRestart checks what fencing tokens rely
// on: once every message (and marker) of a TTL'd bucket expired, the
// stream is empty, yet after a server restart the next sequence is still
// above every earlier one.
func TestSequenceSurvivesEmptyStreamRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := natstest.Start(natstest.Options{StoreDir: dir, Name: "r"})
	if err != nil {
		t.Fatal(err)
	}
	nc := natstest.Connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t", History: 1, LimitMarkerTTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := range 3 {
		seq, err := jskv.PublishIfLast(ctx, js, "$KV.t.k"+string(rune('a'+i)), []byte("x"), nats.Header{jskv.HeaderTTL: {"1s"}}, 0)
		if err != nil {
			t.Fatal(err)
		}
		last = seq
	}
	str, err := js.Stream(ctx, "KV_t")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(8 * time.Second)
	for {
		info, err := str.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			if info.State.LastSeq > last {
				last = info.State.LastSeq // the expiry markers took sequences too
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream still has %d messages", info.State.Msgs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	port := s.Addr().(*net.TCPAddr).Port
	s.Shutdown()
	s.WaitForShutdown()
	s2, err := natstest.Start(natstest.Options{StoreDir: dir, Name: "r", Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Shutdown()
	nc2 := natstest.Connect(t, s2.ClientURL())
	js2, _ := jetstream.New(nc2)
	seq, err := jskv.PublishIfLast(ctx, js2, "$KV.t.ka", []byte("y"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if seq <= last {
		t.Fatalf("after restart of an empty stream the sequence restarted: %d <= %d", seq, last)
	}
}

// TestTooLargeAgainstRealServerErrors provokes each size refusal from a
// real server and checks that exactly those are classified as too large.
func TestTooLargeAgainstRealServerErrors(t *testing.T) {
	nc, js, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SMALL", Subjects: []string{"small.>"}, MaxMsgSize: 1024}); err != nil {
		t.Fatal(err)
	}
	bigHeaders := func(subject string) *nats.Msg {
		// Well under max_payload (1 MiB), so only JetStream's 64 KiB
		// header cap can refuse it.
		return &nats.Msg{Subject: subject, Header: nats.Header{"X-Big": {strings.Repeat("h", 70*1024)}}, Data: []byte("v")}
	}
	publish := func(m *nats.Msg) error { _, err := js.PublishMsg(ctx, m); return err }
	cases := []struct {
		name string
		err  func() error
		want bool
		code int // JetStream err_code the server must have sent, if any
	}{
		{"headers over 64 KiB (10097)", func() error { return publish(bigHeaders("$KV.t.k")) }, true, 10097},
		{"over the stream's max_msg_size (10054)", func() error {
			return publish(&nats.Msg{Subject: "small.x", Data: make([]byte, 2048)})
		}, true, 10054},
		{"over the server's max_payload", func() error {
			return publish(&nats.Msg{Subject: "$KV.t.k", Data: make([]byte, nc.MaxPayload()+1)})
		}, true, 0},
		{"wrong last sequence (10071)", func() error {
			_, err := js.PublishMsg(ctx, &nats.Msg{Subject: "$KV.t.k3", Data: []byte("v")}, jetstream.WithExpectLastSequencePerSubject(99))
			return err
		}, false, 10071},
		{"no responders", func() error { return publish(&nats.Msg{Subject: "nobody.listens", Data: []byte("v")}) }, false, 0},
		{"nil", func() error { return nil }, false, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.err()
			if c.code != 0 {
				var ae *jetstream.APIError
				if !errors.As(err, &ae) || int(ae.ErrorCode) != c.code {
					t.Fatalf("server answered %v, want err_code %d", err, c.code)
				}
			}
			if got := jskv.TooLarge(err); got != c.want {
				t.Fatalf("TooLarge(%v) = %v, want %v", err, got, c.want)
			}
			e := jskv.TooLargeError("write", err)
			if c.want != (e != nil) || (e != nil && e.Code() != 413) {
				t.Fatalf("TooLargeError(%v) = %v, want a 413: %v", err, e, c.want)
			}
		})
	}
	// PublishIfLast answers a refused size as a 413, not as its usual 503.
	m := bigHeaders("$KV.t.k2")
	if _, err := jskv.PublishIfLast(ctx, js, m.Subject, m.Data, m.Header, 0); !errors.Is(err, apierr.ErrTooLarge) {
		t.Fatalf("PublishIfLast with headers over 64 KiB: %v, want a 413", err)
	}
}

// notReadyLeader answers JetStream publishes on subject the way a stream
// leader fresh from an election does: 10163 for the first n attempts, then
// an ack. nats-server 2.15.2 defines 10163 but never sends it, so a real
// cluster cannot be made to; this responder speaks the server's wire reply.
func notReadyLeader(t *testing.T, nc *nats.Conn, subject string, n int) *atomic.Int32 {
	t.Helper()
	var attempts atomic.Int32
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if m.Header.Get(jskv.HeaderExpectedLastSubjectSeq) != "7" {
			_ = m.Respond([]byte(`{"error":{"code":400,"err_code":10003,"description":"expected header missing"}}`))
			return
		}
		if int(attempts.Add(1)) <= n {
			_ = m.Respond([]byte(`{"error":{"code":503,"err_code":10163,"description":"expected last sequence per subject temporarily unavailable"}}`))
			return
		}
		_ = m.Respond([]byte(`{"stream":"KV_t","seq":8}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &attempts
}

// 10163 means nothing was written: PublishIfLast retries it until the
// leader is ready, and gives up with a 503 only when ctx ends.
func TestPublishIfLastRetriesNotReady(t *testing.T) {
	nc, js, _ := setup(t)
	cases := []struct {
		name      string
		notReady  int
		timeout   time.Duration
		wantSeq   uint64
		wantErr   error
		wantTries int32 // 0: at least 2
	}{
		{"ready at once", 0, 2 * time.Second, 8, nil, 1},
		{"ready after three refusals", 3, 2 * time.Second, 8, nil, 4},
		{"never ready before ctx ends", 1 << 30, 300 * time.Millisecond, 0, apierr.ErrUnavailable, 0},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			subject := "fake.leader." + strconv.Itoa(i)
			attempts := notReadyLeader(t, nc, subject, c.notReady)
			ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
			defer cancel()
			began := time.Now()
			seq, err := jskv.PublishIfLast(ctx, js, subject, []byte("v"), nil, 7)
			if seq != c.wantSeq || !errors.Is(err, c.wantErr) || (c.wantErr == nil && err != nil) {
				t.Fatalf("PublishIfLast = %d, %v; want %d, %v", seq, err, c.wantSeq, c.wantErr)
			}
			if c.wantErr != nil && !errors.Is(err, apierr.ReasonJetStreamBusy) {
				t.Fatalf("gave up with %v, want reason jetstream_busy", err)
			}
			if got := attempts.Load(); (c.wantTries != 0 && got != c.wantTries) || (c.wantTries == 0 && got < 2) {
				t.Fatalf("%d attempts, want %d", got, c.wantTries)
			}
			if el := time.Since(began); el > c.timeout+100*time.Millisecond {
				t.Fatalf("took %v, past ctx's %v", el, c.timeout)
			}
		})
	}
}

func reasonOf(err error) string {
	var e *apierr.Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}
