package app_test

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// silentNATS is a NATS server that answers a client's handshake and then nothing more: a
// NATS that froze after foreman connected. asked is closed when the first request comes.
func silentNATS(t *testing.T) (url string, asked <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	req := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := c.Write([]byte(`INFO {"server_id":"silent","version":"2.12.0","proto":1,"headers":true,"jetstream":true,"max_payload":1048576}` + "\r\n")); err != nil {
			return
		}
		r := bufio.NewReader(c)
		ponged, seen := false, false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch {
			case strings.HasPrefix(line, "PING") && !ponged:
				ponged = true // the handshake's; every later PING goes unanswered
				if _, err := c.Write([]byte("PONG\r\n")); err != nil {
					return
				}
			case (strings.HasPrefix(line, "PUB ") || strings.HasPrefix(line, "HPUB ")) && !seen:
				seen = true
				close(req)
			}
		}
	}()
	return "nats://" + ln.Addr().String(), req
}

// A stop (Ctrl-C, SIGTERM) while foreman starts on a NATS that stopped answering (a
// frozen node) ends the start at once: the start's failure shut down what it had begun
// without a deadline, and the drain of the connection waited for the NATS's answer until
// the connection's pings found it stale, 15 s after the Ctrl-C.
func TestStopWhileStartingOnAFrozenNATSEndsAtOnce(t *testing.T) {
	t.Parallel()
	mac := ollamatest.New(t)
	url, asked := silentNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		a, err := app.Start(ctx, app.Config{Addr: "127.0.0.1:0", OllamaURL: mac.URL, NATSURL: url, NATSReplicas: 1, TargetName: "mac-a"},
			slog.New(slog.DiscardHandler))
		if err == nil {
			_ = a.Shutdown(context.Background())
		}
		done <- err
	}()
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("foreman never asked the NATS anything")
	}
	cancel()
	// Far less than the 15 s of unanswered pings, far more than an ended start takes.
	select {
	case err := <-done:
		if err == nil {
			t.Error("Start on a NATS that answers nothing succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a start stopped on a frozen NATS did not end with its stop")
	}
}
