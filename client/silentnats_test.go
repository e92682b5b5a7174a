package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// A Wait whose NATS stopped answering ends with its caller's context: the subscription's
// flush, which waits for the server's answer, held it up to nats.go's own 10 s bound for a
// flush, past a cancel or a deadline of the caller's.
func TestWaitOnASilentNATSEndsWithItsContext(t *testing.T) {
	t.Parallel()
	web := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(web.Close)
	natsURL, subscribed := brokertest.SilentNATS(t, "SUB ")
	c, err := client.New(web.URL, client.WithNATSURL(natsURL))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Wait(ctx, "01JBXJ2Q7ZP1M4Y9VQ8R0S6T3W")
		done <- err
	}()
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("the client never subscribed")
	}
	cancel()
	// Far less than nats.go's 10 s flush bound, and far more than a canceled Wait takes.
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Wait after its cancel: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not end with its context: held by the subscription's flush")
	}
}
