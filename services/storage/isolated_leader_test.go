package storage_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// TestIsolatedLeaderLinearizableReads cuts the shard stream's leader off
// from its two peers while a storage instance and a client stay connected
// to it alone, lets the majority elect a new leader and acknowledge k=v2,
// and then sends linearizable gets and scans through the isolated server
// until it notices it lost its quorum and steps down (10-20 s after the
// cut). The deposed leader still answers STREAM.MSG.GET with v1 all that
// time (the raw control reads below show it), so docs/API.md requires the
// storage to confirm reads by a quorum: every answer must be v2 or a 503,
// never v1.
//
// The test fails, rather than passes vacuously, when no get or scan began
// while the isolated server still claimed leadership.
func TestIsolatedLeaderLinearizableReads(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	t0 := time.Now()
	c := natstest.StartPartitionable(t, natstest.PartitionOptions{})
	stream := "KV_" + subj.ShardBucket("0")
	keySubject := "$KV." + subj.ShardBucket("0") + "." + jskv.EncodeKey("isolated:k")
	const key = "isolated:k"

	// One storage instance per server, each connected to that server only,
	// so that after the cut the isolated server's instance is the only one
	// its clients reach, and it reaches only the isolated server.
	conns := make([]*nats.Conn, len(c.Nodes))
	for i := range c.Nodes {
		conns[i] = c.Connect(t, []int{i})
		startOn(t, conns[i], storage.Config{Shards: []string{"0"}, Replicas: 3})
	}
	rev1 := putUntilAcked(t, conns[0], key, "v1", 10*time.Second)
	// The node to cut leads both the stream and the JetStream meta group:
	// that deposed leader answers raw reads alone the longest (see
	// MoveStreamLeader).
	old := c.MetaLeader()
	if old < 0 {
		t.Fatal("no meta leader")
	}
	c.MoveStreamLeader(stream, old)
	majority := c.Others(old)
	iso, maj := conns[old], conns[majority[0]]
	t.Logf("setup %s: v1 at revision %d, stream and meta leader n%d (meta leader now n%d)",
		time.Since(t0).Round(time.Millisecond), rev1, old, c.MetaLeader())

	c.Cut(old)
	cut := time.Now()
	eventually(t, 20*time.Second, "a new leader on the majority side", func() bool {
		return c.StreamLeader(stream, majority...) >= 0
	})
	t.Logf("majority elected n%d %s after the cut", c.StreamLeader(stream, majority...), time.Since(cut).Round(time.Millisecond))
	rev2 := putUntilAcked(t, maj, key, "v2", 15*time.Second)
	t.Logf("v2 acknowledged at revision %d through the majority %s after the cut; n%d claims leadership: %v",
		rev2, time.Since(cut).Round(time.Millisecond), old, c.ClaimsStreamLeader(old, stream))

	claims := func() bool { return c.ClaimsStreamLeader(old, stream) }
	deadline := cut.Add(24 * time.Second)
	judge := func(found bool, value string, rev uint64) (natstest.Verdict, string) {
		if found && value == "v2" && rev == rev2 {
			return natstest.Fresh, ""
		}
		return natstest.Stale, fmt.Sprintf("found=%v value=%q revision=%d (v1 was %d, v2 %d)", found, value, rev, rev1, rev2)
	}
	var (
		wg                   sync.WaitGroup
		gets, scans, control natstest.EdgeReads
		loopStart            = time.Now()
	)
	wg.Add(3)
	go func() { // single linearizable gets, and now and then a burst of three
		defer wg.Done()
		n := 0
		gets = natstest.ReadAtEdge(deadline, claims, func() (natstest.Verdict, string) {
			defer time.Sleep(5 * time.Millisecond) // thousands of reads are plenty; spare the shared cores
			n++
			if n%4 != 0 {
				return getVerdict(iso, key, judge)
			}
			vs := make([]natstest.Verdict, 3)
			ds := make([]string, 3)
			var bw sync.WaitGroup
			for i := range vs {
				bw.Go(func() { vs[i], ds[i] = getVerdict(iso, key, judge) })
			}
			bw.Wait()
			worst := 0
			for i := range vs {
				if vs[i] > vs[worst] {
					worst = i
				}
			}
			return vs[worst], "in a burst: " + ds[worst]
		})
	}()
	go func() {
		defer wg.Done()
		scans = natstest.ReadAtEdge(deadline, claims, func() (natstest.Verdict, string) {
			var resp pb.ScanResponse
			if v, d, err := callEdge(iso, subj.Shard("0", "scan"), &pb.ScanRequest{Prefix: "isolated:", Limit: 10}, &resp); err != nil {
				return v, d
			}
			for _, it := range resp.Items {
				if it.Key == key {
					return judge(true, string(it.Value), it.Revision)
				}
			}
			return judge(false, "", 0)
		})
	}()
	go func() { // the hazard itself: the deposed leader's own answer
		defer wg.Done()
		control = natstest.ReadAtEdge(deadline, claims, func() (natstest.Verdict, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			// A sample is enough; leave the cores to the reads under test.
			defer time.Sleep(20 * time.Millisecond)
			m, found, err := jskv.LeaderGet(ctx, iso, stream, keySubject)
			if err != nil {
				return errVerdict(ctx, err)
			}
			if !found {
				return judge(false, "", 0)
			}
			return judge(true, string(m.Data), m.Seq)
		})
	}()
	wg.Wait()
	t.Logf("n%d last seen claiming leadership %s after the cut", old, loopStart.Add(max(gets.Claimed, scans.Claimed, control.Claimed)).Sub(cut).Round(time.Millisecond))
	t.Logf("kv.get:  %v", gets)
	t.Logf("kv.scan: %v", scans)
	t.Logf("control, raw STREAM.MSG.GET to the isolated server: %v", control)
	if control.Counts[natstest.Stale] == 0 {
		// Without the hazard a pass proves nothing about the storage.
		t.Errorf("the isolated server never answered a raw STREAM.MSG.GET with v1 after v2 was acknowledged: the edge was not reproduced")
	}
	gets.Require(t, "kv.get", fmt.Sprintf("n%d", old), edgeWait, edgeDeadline)
	scans.Require(t, "kv.scan", fmt.Sprintf("n%d", old), edgeWait, edgeDeadline)
}

// getVerdict sends one linearizable get through nc and judges the answer.
func getVerdict(nc *nats.Conn, key string, judge func(bool, string, uint64) (natstest.Verdict, string)) (natstest.Verdict, string) {
	var resp pb.GetResponse
	if v, d, err := callEdge(nc, subj.Shard("0", "get"), &pb.GetRequest{Key: key, Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE}, &resp); err != nil {
		return v, d
	}
	return judge(resp.Found, string(resp.Value), resp.Revision)
}

const (
	// edgeDeadline is the deadline a read under test tells the service
	// (service.HeaderTimeout); edgeWait is how long the test waits for the
	// reply. The margin between them lets a service's 503 at its deadline
	// arrive, so that no reply at all is a hang, not a race.
	edgeDeadline = 3 * time.Second
	edgeWait     = 2 * edgeDeadline
)

// callEdge sends a request with a service deadline of edgeDeadline and waits
// edgeWait for the reply. err is nil on a success reply (resp is filled);
// otherwise the verdict is Refused for a 503, TimedOut for no reply, and
// Erred for any other error.
func callEdge(nc *nats.Conn, subject string, req, resp proto.Message) (natstest.Verdict, string, error) {
	data, err := proto.Marshal(req)
	if err != nil {
		panic(err)
	}
	hdr := nats.Header{service.HeaderTimeout: {fmt.Sprint(edgeDeadline.Milliseconds())}}
	ctx, cancel := context.WithTimeout(context.Background(), edgeWait)
	defer cancel()
	reply, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Header: hdr, Data: data})
	if err == nil {
		err = service.DecodeReply(reply, resp)
	}
	switch {
	case err == nil:
		return natstest.Fresh, "", nil
	case ctx.Err() != nil:
		return natstest.TimedOut, "", err
	case errors.Is(err, apierr.ErrUnavailable):
		return natstest.Refused, "", err
	}
	return natstest.Erred, err.Error(), err
}

// errVerdict judges a failed raw read: a 503 is an allowed answer, a
// caller deadline is counted apart, any other error is a wrong answer.
func errVerdict(ctx context.Context, err error) (natstest.Verdict, string) {
	switch {
	case ctx.Err() != nil:
		return natstest.TimedOut, ""
	case errors.Is(err, apierr.ErrUnavailable):
		return natstest.Refused, ""
	}
	return natstest.Erred, err.Error()
}

// putUntilAcked writes key=value, retrying 503s (no leader yet, a leader
// change in progress) until one is acknowledged, and returns its revision.
func putUntilAcked(t *testing.T, nc *nats.Conn, key, value string, d time.Duration) uint64 {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var resp pb.PutResponse
		err := storageCall(ctx, nc, "put", &pb.PutRequest{Key: key, Value: []byte(value)}, &resp)
		cancel()
		if err == nil {
			return resp.Revision
		}
		if !errors.Is(err, apierr.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("put %s=%s: %v", key, value, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
