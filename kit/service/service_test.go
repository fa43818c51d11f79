package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/tcpproxy"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// echo answers a GetRequest with its key, or fails the way the key says.
func echo(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.GetRequest{}
	if err := r.Decode(in); err != nil {
		return nil, err
	}
	switch in.Key {
	case "conflict":
		return nil, apierr.Errorf(apierr.ReasonRevisionMismatch, "revision is 3, not 2")
	case "panic-free-bug":
		return nil, errors.New("boom")
	case "slow":
		<-ctx.Done()
		return nil, ctx.Err()
	case "huge": // a reply over natstest's 1 MiB max_payload
		return &pb.GetResponse{Found: true, Key: in.Key, Value: make([]byte, 1<<20)}, nil
	}
	return &pb.GetResponse{Found: true, Key: in.Key}, nil
}

func start(t *testing.T, cfg service.Config) *nats.Conn {
	t.Helper()
	s := natstest.Server(t)
	nc := natstest.Connect(t, s.ClientURL())
	cfg.Name, cfg.Version = "latchkey-test", "0.0.1"
	svc, err := service.Start(nc, cfg, service.Endpoint{Name: "echo", Subject: "t.echo", Func: echo})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	return nc
}

func TestRepliesInTheRequestsCodec(t *testing.T) {
	nc := start(t, service.Config{})
	cases := []struct {
		name, body, wantCode, wantBody string
	}{
		{"json ok", `{"key":"a"}`, "", `{"found":true,"key":"a"}`},
		{"json conflict", `{"key":"conflict"}`, "409", `{"code":409,"reason":"revision_mismatch","message":"revision is 3, not 2"}`},
		{"json internal", `{"key":"panic-free-bug"}`, "500", `{"code":500,"reason":"internal","message":"boom"}`},
		{"json malformed", `{"key":`, "400", ""},
	}
	for _, c := range cases {
		m, err := nc.Request("t.echo", []byte(c.body), 2*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := m.Header.Get(apierr.HeaderCode); got != c.wantCode {
			t.Errorf("%s: code %q, want %q", c.name, got, c.wantCode)
		}
		if c.wantBody != "" && !sameJSON(t, m.Data, c.wantBody) {
			t.Errorf("%s: body %s, want %s", c.name, m.Data, c.wantBody)
		}
		if m.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: JSON request answered without a JSON content type", c.name)
		}
	}
}

// sameJSON compares as values: protojson varies its whitespace on purpose.
func sameJSON(t *testing.T, got []byte, want string) bool {
	var a, b any
	if err := json.Unmarshal(got, &a); err != nil {
		t.Fatalf("reply is not JSON: %s", got)
	}
	if err := json.Unmarshal([]byte(want), &b); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(a, b)
}

func TestProtobufCallMapsErrors(t *testing.T) {
	nc := start(t, service.Config{})
	ctx := context.Background()
	resp := &pb.GetResponse{}
	if err := service.Call(ctx, nc, "t.echo", nil, &pb.GetRequest{Key: "k"}, resp); err != nil || resp.Key != "k" {
		t.Fatalf("ok call: %v %v", resp, err)
	}
	err := service.Call(ctx, nc, "t.echo", nil, &pb.GetRequest{Key: "conflict"}, resp)
	var e *apierr.Error
	if !errors.As(err, &e) || !errors.Is(err, apierr.ErrConflict) || !errors.Is(err, apierr.ReasonRevisionMismatch) {
		t.Fatalf("conflict: %v", err)
	}
	if err := service.Call(ctx, nc, "t.nobody", nil, &pb.GetRequest{Key: "k"}, resp); !errors.Is(err, apierr.ErrUnavailable) {
		t.Fatalf("no responders: %v, want ErrUnavailable", err)
	}
}

func TestCallerDeadlineTravels(t *testing.T) {
	nc := start(t, service.Config{Timeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	// The service gives up when the caller's deadline passes, so the slot
	// is freed; the caller sees a 503 either way.
	err := service.Call(ctx, nc, "t.echo", nil, &pb.GetRequest{Key: "slow"}, &pb.GetResponse{})
	if !errors.Is(err, apierr.ErrUnavailable) {
		t.Fatalf("slow call: %v, want ErrUnavailable", err)
	}
}

func TestOverloadAnswers503(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Connect(t, s.ClientURL())
	entered, release := make(chan struct{}, 2), make(chan struct{})
	svc, err := service.Start(nc, service.Config{Name: "latchkey-test", Version: "0.0.1", MaxInFlight: 2},
		service.Endpoint{Name: "gate", Subject: "t.gate", Func: func(ctx context.Context, r *service.Request) (proto.Message, error) {
			entered <- struct{}{}
			<-release
			return &pb.GetResponse{}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = svc.Stop(context.Background()) }()
	replies := make(chan *nats.Msg, 2)
	for i := 0; i < 2; i++ { // occupy both slots
		go func() {
			m, _ := nc.Request("t.gate", nil, 5*time.Second)
			replies <- m
		}()
	}
	<-entered
	<-entered
	m, err := nc.Request("t.gate", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(apierr.HeaderCode); got != "503" {
		t.Fatalf("third request on a full service: code %q, want 503", got)
	}
	close(release)
	for i := 0; i < 2; i++ {
		if m := <-replies; m == nil || m.Header.Get(apierr.HeaderCode) != "" {
			t.Fatalf("admitted request not answered cleanly: %v", m)
		}
	}
}

func TestStopAnswersInFlight(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Connect(t, s.ClientURL())
	release := make(chan struct{})
	svc, err := service.Start(nc, service.Config{Name: "latchkey-test", Version: "0.0.1"}, service.Endpoint{
		Name: "wait", Subject: "t.wait",
		Func: func(ctx context.Context, r *service.Request) (proto.Message, error) {
			<-release
			return &pb.GetResponse{Found: true}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		err := service.Call(context.Background(), nc, "t.wait", nil, &pb.GetRequest{Key: "k"}, &pb.GetResponse{})
		got <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the request arrive
	stopped := make(chan error, 1)
	go func() { stopped <- svc.Stop(context.Background()) }()
	close(release)
	if err := <-got; err != nil {
		t.Fatalf("in-flight request lost at stop: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// A JetStream size refusal that reaches the runtime unwrapped is a 413
// (the caller must send less), not a 500 or a retryable 503.
func TestJetStreamTooLargeIs413(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	svc, err := service.Start(nc, service.Config{Name: "latchkey-test", Version: "0.0.1"}, service.Endpoint{
		Name: "store", Subject: "t.store",
		Func: func(ctx context.Context, r *service.Request) (proto.Message, error) {
			// Headers over 64 KiB: JetStream error 10097, returned as is.
			_, err := js.PublishMsg(ctx, &nats.Msg{Subject: "s.x", Header: nats.Header{"X-Big": {strings.Repeat("h", 70*1024)}}})
			return &pb.PutResponse{}, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	err = service.Call(ctx, nc, "t.store", nil, &pb.PutRequest{Key: "k"}, &pb.PutResponse{})
	var e *apierr.Error
	if !errors.As(err, &e) || e.Code() != 413 || !strings.Contains(e.Message, "64k") {
		t.Fatalf("JetStream 10097 answered %v, want a 413 naming the 64k limit", err)
	}
}

// A reply NATS cannot carry is not dropped: the caller gets a 413 that
// names the size and the limit, and the endpoint's stats count an error.
func TestOversizedReplyAnswers413(t *testing.T) {
	nc := start(t, service.Config{})
	for _, c := range []struct {
		name string
		body []byte
	}{
		{"protobuf", mustMarshal(t, &pb.GetRequest{Key: "huge"})},
		{"json", []byte(`{"key":"huge"}`)},
	} {
		m, err := nc.Request("t.echo", c.body, 2*time.Second)
		if err != nil {
			t.Fatalf("%s: no reply to a request whose reply is too large: %v", c.name, err)
		}
		msg := m.Header.Get(apierr.HeaderMessage)
		if got := m.Header.Get(apierr.HeaderCode); got != "413" || !strings.Contains(msg, "max_payload is 1048576 bytes") || !strings.Contains(msg, "bytes (plus headers)") {
			t.Fatalf("%s: code %q message %q, want 413 naming the reply's size and max_payload", c.name, got, msg)
		}
	}
	m, err := nc.Request("$SRV.STATS.latchkey-test", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Endpoints []struct {
			Name string           `json:"name"`
			Data map[string]int64 `json:"data"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(m.Data, &stats); err != nil {
		t.Fatal(err)
	}
	if len(stats.Endpoints) != 1 || stats.Endpoints[0].Data["errors"] != 2 || stats.Endpoints[0].Data["replied"] != 2 {
		t.Fatalf("stats %s: want 2 replied, 2 errors", m.Data)
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A request that Stop cuts short (its context cancelled once Stop's own
// patience ran out) is a 503 the caller retries elsewhere, not a 500.
func TestStopCancelledRequestIs503(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Connect(t, s.ClientURL())
	entered := make(chan struct{})
	svc, err := service.Start(nc, service.Config{Name: "latchkey-test", Version: "0.0.1"}, service.Endpoint{
		Name: "wait", Subject: "t.wait",
		Func: func(ctx context.Context, r *service.Request) (proto.Message, error) {
			close(entered)
			<-ctx.Done()
			return nil, ctx.Err()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		got <- service.Call(context.Background(), nc, "t.wait", nil, &pb.GetRequest{Key: "k"}, &pb.GetResponse{})
	}()
	<-entered
	stopCtx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = svc.Stop(stopCtx)
	err = <-got
	var e *apierr.Error
	if !errors.As(err, &e) || e.Code() != 503 || !errors.Is(err, apierr.ReasonShuttingDown) {
		t.Fatalf("request cancelled by Stop: %v, want 503 shutting_down", err)
	}
}

// TestLateDeliveryIsNotCarriedOut: a request can reach a service long
// after it was sent. Here the caller's link is cut, so nats.go holds the
// request in its reconnect buffer; the call times out; the link comes back
// and the buffered request is delivered. Timed only from its arrival
// (Latchkey-Timeout-Ms) it runs, although nobody waits for it: a put would
// land after, and over, the caller's next writes. With its deadline
// (Latchkey-Deadline, which service.Call sends) it is refused.
func TestLateDeliveryIsNotCarriedOut(t *testing.T) {
	s := natstest.Server(t)
	var ran atomic.Int64
	svcConn := natstest.Connect(t, s.ClientURL())
	svc, err := service.Start(svcConn, service.Config{Name: "latchkey-test", Version: "0.0.1"}, service.Endpoint{
		Name: "count", Subject: "t.count",
		Func: func(ctx context.Context, r *service.Request) (proto.Message, error) {
			ran.Add(1)
			return &pb.GetResponse{}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	p, err := tcpproxy.To(strings.TrimPrefix(s.ClientURL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	nc, err := nats.Connect("nats://"+p.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)

	for _, tc := range []struct {
		name     string
		call     func(ctx context.Context) error
		wantRuns int64
	}{
		{"timeout header only", func(ctx context.Context) error {
			m := &nats.Msg{Subject: "t.count", Header: nats.Header{service.HeaderTimeout: {"5000"}}}
			_, err := nc.RequestMsgWithContext(ctx, m)
			return err
		}, 1},
		{"service.Call with its deadline", func(ctx context.Context) error {
			return service.Call(ctx, nc, "t.count", nil, &pb.GetRequest{Key: "k"}, &pb.GetResponse{})
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := ran.Load()
			p.Cut(true)
			for !nc.IsReconnecting() {
				time.Sleep(time.Millisecond)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			err := tc.call(ctx)
			cancel()
			if err == nil {
				t.Fatal("a call over a cut link was answered")
			}
			time.Sleep(2 * service.ClockAllowance) // the deadline passes by more than the allowance
			p.Cut(false)
			if err := nc.FlushTimeout(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			// The late request was delivered before this fresh call (the
			// reconnect buffer is flushed first); each runs on its own
			// goroutine, so give the late one a moment to show.
			if err := service.Call(context.Background(), nc, "t.count", nil, &pb.GetRequest{Key: "k"}, &pb.GetResponse{}); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(200 * time.Millisecond); time.Now().Before(deadline) && ran.Load()-before-1 < tc.wantRuns; {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond)
			if got := ran.Load() - before - 1; got != tc.wantRuns {
				t.Fatalf("the late request ran %d times, want %d", got, tc.wantRuns)
			}
		})
	}
}
