package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/nats-io/nats.go"
)

// deployment is where the examples find latchkey: in a program it is
// nats.DefaultURL with `latchkey dev` running. TestMain (main_test.go)
// points it at an embedded NATS server running the real services, so that
// `go test` checks every Output below. Each example writes its own keys and
// locks, so it runs alone (-run), after the others and again (-count).
var deployment = nats.DefaultURL

func ExampleNew() {
	nc, err := nats.Connect(deployment)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc, client.WithPrefix("latchkey"), client.WithTimeout(2*time.Second))
	fmt.Println(c.Conn().IsConnected())
	// Output: true
}

func ExampleClient_Put() {
	ctx := context.Background()
	nc, _ := nats.Connect(deployment)
	defer nc.Close()
	c := client.New(nc)

	rev, err := c.Put(ctx, "user:42", []byte("hello"))
	if err != nil {
		log.Fatal(err)
	}
	e, err := c.Get(ctx, "user:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s, stored at the revision Put returned: %v\n", e.Value, e.Revision == rev)

	// A session that disappears by itself after 30 seconds.
	if _, err := c.Put(ctx, "session:abc", []byte("{}"), client.WithTTL(30*time.Second)); err != nil {
		log.Fatal(err)
	}
	// Output: hello, stored at the revision Put returned: true
}

func ExampleClient_Put_compareAndSet() {
	ctx := context.Background()
	nc, _ := nats.Connect(deployment)
	defer nc.Close()
	c := client.New(nc)
	defer c.Delete(ctx, "counter") // leave nothing behind: the example may run again

	// Create only if absent: the second attempt finds the key.
	for range 2 {
		_, err := c.Put(ctx, "counter", []byte("1"), client.IfAbsent())
		switch {
		case errors.Is(err, client.ErrConflict):
			fmt.Println("someone created it first")
		case err != nil:
			log.Fatal(err)
		default:
			fmt.Println("created")
		}
	}

	// Read-modify-write: the put fails with ErrConflict if anyone wrote
	// the key after our read; then read again and retry.
	e, err := c.Get(ctx, "counter")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.Put(ctx, "counter", append(e.Value, '!'), client.IfRevision(e.Revision)); err != nil {
		log.Fatal(err)
	}
	// A second writer that read the same revision loses the race.
	_, err = c.Put(ctx, "counter", append(e.Value, '?'), client.IfRevision(e.Revision))
	if errors.Is(err, client.ErrConflict) {
		fmt.Println("lost the race:", client.Reason(err))
	}
	// Output:
	// created
	// someone created it first
	// lost the race: revision_mismatch
}

func ExampleClient_Put_fenced() {
	ctx := context.Background()
	nc, _ := nats.Connect(deployment)
	defer nc.Close()
	c := client.New(nc)

	first, err := c.Acquire(ctx, "jobs/report", client.WithOwner("worker-1"))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.Put(ctx, "report:today", []byte("started"), client.WithFence(first.Name(), first.Token())); err != nil {
		log.Fatal(err)
	}

	// worker-1 stalls past its lease (here it lets go), worker-2 takes the
	// lock over and writes with its newer token.
	_ = first.Release(ctx)
	second, err := c.Acquire(ctx, "jobs/report", client.WithOwner("worker-2"))
	if err != nil {
		log.Fatal(err)
	}
	defer second.Release(ctx)
	if _, err := c.Put(ctx, "report:today", []byte("done"), client.WithFence(second.Name(), second.Token())); err != nil {
		log.Fatal(err)
	}

	// worker-1 wakes up and writes with its old token: refused.
	_, err = c.Put(ctx, "report:today", []byte("started"), client.WithFence("jobs/report", first.Token()))
	if errors.Is(err, client.ErrStaleFence) {
		fmt.Println("a newer lock holder already wrote this key")
	}
	// Output: a newer lock holder already wrote this key
}

func ExampleClient_Get() {
	ctx := context.Background()
	nc, _ := nats.Connect(deployment)
	defer nc.Close()
	c := client.New(nc)

	if _, err := c.Get(ctx, "user:0"); errors.Is(err, client.ErrNotFound) {
		fmt.Println("no such key")
	}

	if _, err := c.Put(ctx, "user:7", []byte("ada")); err != nil {
		log.Fatal(err)
	}
	e, err := c.Get(ctx, "user:7")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s = %s\n", e.Key, e.Value)

	// A cheaper read that may lag behind recent writes.
	_, _ = c.Get(ctx, "user:7", client.Stale())
	// Output:
	// no such key
	// user:7 = ada
}

func ExampleClient_Delete() {
	ctx := context.Background()
	nc, _ := nats.Connect(deployment)
	defer nc.Close()
	c := client.New(nc)

	if _, err := c.Put(ctx, "user:8", []byte("bob")); err != nil {
		log.Fatal(err)
	}
	for range 2 {
		deleted, _, err := c.Delete(ctx, "user:8")
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("deleted:", deleted)
	}
	// Output:
	// deleted: true
	// deleted: false
}

func ExampleClient_Scan() {
	ctx := context.Background()
	nc, _ := nats.Connect(deployment)
	defer nc.Close()
	c := client.New(nc)

	for _, k := range []string{"team:c", "team:a", "team:b"} {
		if _, err := c.Put(ctx, k, nil); err != nil {
			log.Fatal(err)
		}
	}

	// Pages come in key order; the next one starts after the last key.
	after := ""
	for {
		page, err := c.Scan(ctx, "team:", client.After(after), client.Limit(2))
		if err != nil {
			log.Fatal(err)
		}
		for _, e := range page.Items {
			fmt.Println(e.Key)
		}
		if !page.More {
			break
		}
		after = page.Items[len(page.Items)-1].Key
	}
	// Output:
	// team:a
	// team:b
	// team:c
}

func ExampleClient_ScanAll() {
	ctx := context.Background()
	nc, _ := nats.Connect(deployment)
	defer nc.Close()
	c := client.New(nc)

	for k, v := range map[string]string{"color:sky": "blue", "color:grass": "green"} {
		if _, err := c.Put(ctx, k, []byte(v)); err != nil {
			log.Fatal(err)
		}
	}

	for e, err := range c.ScanAll(ctx, "color:") {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s = %s\n", e.Key, e.Value)
	}
	// Output:
	// color:grass = green
	// color:sky = blue
}

func ExampleClient_Acquire() {
	ctx := context.Background()
	nc, _ := nats.Connect(deployment)
	defer nc.Close()
	c := client.New(nc)

	// Wait up to 30s for the lock; the lease is renewed in the background.
	l, err := c.Acquire(ctx, "reports/nightly",
		client.WithOwner("worker-1"), client.WithLeaseTTL(10*time.Second), client.WithWait(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)
	fmt.Println("holding", l.Name())

	// Without a wait, a held lock is refused at once.
	if _, err := c.Acquire(ctx, "reports/nightly", client.WithOwner("worker-2")); errors.Is(err, client.ErrConflict) {
		fmt.Println("worker-2: someone else is running the report")
	}

	// Stop working when the lease is lost, and fence every write: a write
	// made after a newer holder wrote the key is refused.
	work, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-l.Done(); cancel() }()
	if _, err := c.Put(work, "reports/nightly/status", []byte("running"),
		client.WithFence(l.Name(), l.Token())); err != nil {
		log.Print(err)
	}
	// Output:
	// holding reports/nightly
	// worker-2: someone else is running the report
}

func ExampleClient_LockInfo() {
	ctx := context.Background()
	nc, _ := nats.Connect(deployment)
	defer nc.Close()
	c := client.New(nc)

	l, err := c.Acquire(ctx, "reports/weekly", client.WithOwner("worker-1"))
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)

	st, err := c.LockInfo(ctx, "reports/weekly")
	if err != nil {
		log.Fatal(err)
	}
	if st.Held {
		fmt.Printf("held by %s, with our token: %v\n", st.Owner, st.Token == l.Token())
	}
	// Output: held by worker-1, with our token: true
}
