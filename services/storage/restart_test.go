package storage_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
)

// TestServerRestartViewResumes restarts the NATS server under a running
// storage instance: afterwards, writes work again and scans (which wait for
// the view) see them, so the view's consumer resumed.
func TestServerRestartViewResumes(t *testing.T) {
	dir := t.TempDir()
	ns, err := natstest.Start(natstest.Options{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	port := ns.Addr().(*net.TCPAddr).Port
	defer func() { ns.Shutdown() }()
	nc := natstest.Connect(t, ns.ClientURL())
	e := &env{t: t, nc: nc, url: ns.ClientURL()}
	e.start("0")
	put(t, nc, &pb.PutRequest{Key: "before", Value: []byte("1")})

	ns.Shutdown()
	ns.WaitForShutdown()
	ns, err = natstest.Start(natstest.Options{StoreDir: dir, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "writes after the restart", func() bool {
		var resp pb.PutResponse
		return call(nc, "0", "put", &pb.PutRequest{Key: "after", Value: []byte("2")}, &resp) == nil
	})
	eventually(t, 20*time.Second, "scan after the restart", func() bool {
		var resp pb.ScanResponse
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		err := storageCall(ctx, nc, "scan", &pb.ScanRequest{}, &resp)
		return err == nil && len(resp.Items) == 2
	})
	eventually(t, 20*time.Second, "stale read after the restart", func() bool {
		var resp pb.GetResponse
		err := call(nc, "0", "get", &pb.GetRequest{Key: "after", Consistency: pb.Consistency_CONSISTENCY_STALE}, &resp)
		return err == nil && resp.Found
	})
}
