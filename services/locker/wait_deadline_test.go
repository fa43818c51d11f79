package locker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// A waiting acquire answers before its caller gives up, even when a step
// of the wait blocks: here the locker may not use JetStream's consumer
// API, so setting up the lock's watch hangs until JetStream's own timeout
// (5 s), far past the caller's 1.5 s.
func TestWaitAnswersBeforeCallerDeadline(t *testing.T) {
	noConsumers := &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.CONSUMER.>"}}}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		Users: []*server.User{{Username: "client", Password: "c"}, {Username: "locker", Password: "l", Permissions: noConsumers}},
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(s.Shutdown)
	startLocker(t, natstest.Connect(t, s.ClientURL(), nats.UserInfo("locker", "l"),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})), 1) // the denials are the point
	l := lk{t: t, nc: natstest.Connect(t, s.ClientURL(), nats.UserInfo("client", "c"))}
	l.mustAcquire("busy", "holder", 60000)

	const callerTimeout = 1500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), callerTimeout)
	defer cancel()
	began := time.Now()
	err = service.Call(ctx, l.nc, set.Public(subjects.LockAcquire),
		nil, &pb.AcquireRequest{Name: "busy", Owner: "waiter", TtlMs: 1000, WaitMs: 10000}, &pb.AcquireResponse{})
	elapsed := time.Since(began)
	if !errors.Is(err, apierr.ReasonLockHeld) || elapsed >= callerTimeout {
		t.Fatalf("waiting acquire answered %v after %v; want 409 lock_held before the caller's %v", err, elapsed, callerTimeout)
	}
}
