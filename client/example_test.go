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

// These examples need a running deployment (`latchkey dev`), so they have
// no Output lines: they compile and document; tests/kv_test.go runs the
// same calls against real services.

func ExampleNew() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc, client.WithPrefix("latchkey"), client.WithTimeout(2*time.Second))
	_ = c
}

func ExampleClient_Put() {
	ctx := context.Background()
	nc, _ := nats.Connect(nats.DefaultURL)
	defer nc.Close()
	c := client.New(nc)

	rev, err := c.Put(ctx, "user:42", []byte("hello"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stored at revision", rev)

	// A session that disappears by itself after 30 seconds.
	if _, err := c.Put(ctx, "session:abc", []byte("{}"), client.WithTTL(30*time.Second)); err != nil {
		log.Fatal(err)
	}
}

func ExampleClient_Put_compareAndSet() {
	ctx := context.Background()
	nc, _ := nats.Connect(nats.DefaultURL)
	defer nc.Close()
	c := client.New(nc)

	// Create only if absent.
	_, err := c.Put(ctx, "counter", []byte("1"), client.IfAbsent())
	if errors.Is(err, client.ErrConflict) {
		fmt.Println("someone created it first")
	}

	// Read-modify-write: the put fails with ErrConflict if anyone wrote
	// the key after our read; then read again and retry.
	e, err := c.Get(ctx, "counter")
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Put(ctx, "counter", append(e.Value, '!'), client.IfRevision(e.Revision))
	if errors.Is(err, client.ErrConflict) {
		fmt.Println("lost the race; retry")
	}
}

func ExampleClient_Put_fenced() {
	ctx := context.Background()
	nc, _ := nats.Connect(nats.DefaultURL)
	defer nc.Close()
	c := client.New(nc)

	// token comes from acquiring the lock "jobs/report".
	var token uint64 = 7
	_, err := c.Put(ctx, "report:today", []byte("done"), client.WithFence("jobs/report", token))
	if client.Reason(err) == "stale_fence" {
		fmt.Println("a newer lock holder already wrote this key")
	}
}

func ExampleClient_Get() {
	ctx := context.Background()
	nc, _ := nats.Connect(nats.DefaultURL)
	defer nc.Close()
	c := client.New(nc)

	e, err := c.Get(ctx, "user:42")
	switch {
	case errors.Is(err, client.ErrNotFound):
		fmt.Println("no such key")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Printf("%s = %s (revision %d)\n", e.Key, e.Value, e.Revision)
	}

	// A cheaper read that may lag behind recent writes.
	_, _ = c.Get(ctx, "user:42", client.Stale())
}

func ExampleClient_Delete() {
	ctx := context.Background()
	nc, _ := nats.Connect(nats.DefaultURL)
	defer nc.Close()
	c := client.New(nc)

	deleted, rev, err := c.Delete(ctx, "user:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(deleted, rev)
}

func ExampleClient_Scan() {
	ctx := context.Background()
	nc, _ := nats.Connect(nats.DefaultURL)
	defer nc.Close()
	c := client.New(nc)

	after := ""
	for {
		page, err := c.Scan(ctx, "user:", client.After(after), client.Limit(100))
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
}

func ExampleClient_ScanAll() {
	ctx := context.Background()
	nc, _ := nats.Connect(nats.DefaultURL)
	defer nc.Close()
	c := client.New(nc)

	for e, err := range c.ScanAll(ctx, "user:") {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s = %s\n", e.Key, e.Value)
	}
}

func ExampleClient_Acquire() {
	ctx := context.Background()
	nc, _ := nats.Connect(nats.DefaultURL)
	defer nc.Close()
	c := client.New(nc)

	// Wait up to 30s for the lock; the lease is renewed in the background.
	l, err := c.Acquire(ctx, "reports/nightly",
		client.WithOwner("worker-1"), client.WithLeaseTTL(10*time.Second), client.WithWait(30*time.Second))
	if errors.Is(err, client.ErrConflict) {
		fmt.Println("someone else is running the report")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)

	// Stop working when the lease is lost, and fence every write: a write
	// made after a newer holder wrote the key is refused.
	work, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-l.Done(); cancel() }()
	if _, err := c.Put(work, "reports/nightly/status", []byte("running"),
		client.WithFence(l.Name(), l.Token())); err != nil {
		log.Print(err)
	}
}

func ExampleClient_LockInfo() {
	ctx := context.Background()
	nc, _ := nats.Connect(nats.DefaultURL)
	defer nc.Close()
	st, err := client.New(nc).LockInfo(ctx, "reports/nightly")
	if err != nil {
		log.Fatal(err)
	}
	if st.Held {
		fmt.Printf("held by %s (token %d) for another %s\n", st.Owner, st.Token, st.TTLRemaining)
	}
}
