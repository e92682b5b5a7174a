package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// queueStatusEvery is how often a waiting job's position is read.
const queueStatusEvery = time.Second

// queueStatus shows a waiting job's place in the queue on one terminal line, rewritten in
// place ("queued: position 3, eta 15:04:05") until the job leaves the queue or Stop.
// Other output to the same terminal calls Clear first.
type queueStatus struct {
	mu    sync.Mutex
	w     io.Writer
	shown bool

	cancel context.CancelFunc
	done   chan struct{}
}

// startQueueStatus polls job id (GET /jobs/{id}: queue_position, eta) and shows its place
// on w while it waits.
func startQueueStatus(ctx context.Context, w io.Writer, c *client.Client, id string) *queueStatus {
	ctx, cancel := context.WithCancel(ctx)
	q := &queueStatus{w: w, cancel: cancel, done: make(chan struct{})}
	go q.run(ctx, c, id)
	return q
}

func (q *queueStatus) run(ctx context.Context, c *client.Client, id string) {
	defer close(q.done)
	tick := time.NewTicker(queueStatusEvery)
	defer tick.Stop()
	for {
		j, err := c.Job(ctx, id)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			// A failed read is not worth a line: the next one may work, and the job's own
			// progress is reported by the command.
		case j.State != client.StateQueued && j.State != client.StateRetrying:
			q.Clear()
			return
		case j.QueuePosition > 0 || j.WaitingElsewhere:
			q.show(queueLine(j))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// queueLine is the status text of a waiting job.
func queueLine(j *client.Job) string {
	if j.WaitingElsewhere {
		return "queued: waiting for another Mac"
	}
	line := fmt.Sprintf("queued: position %d", j.QueuePosition)
	if j.ETA != nil && !j.ETA.IsZero() {
		line += ", eta " + j.ETA.Local().Format("15:04:05")
	}
	if j.LeftElsewhere {
		line += ", left to another Mac"
	}
	return line
}

func (q *queueStatus) show(line string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	fmt.Fprint(q.w, "\r"+line+ansiClearLine)
	q.shown = true
}

// Clear removes the status line, so other output starts on a clean line.
func (q *queueStatus) Clear() {
	if q == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shown {
		fmt.Fprint(q.w, "\r"+ansiClearLine)
		q.shown = false
	}
}

// Println writes a line of other output to the status line's writer, the status line
// cleared first; safe on nil (then it just prints to w).
func (q *queueStatus) Println(w io.Writer, line string) {
	if q == nil {
		fmt.Fprintln(w, line)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shown {
		fmt.Fprint(q.w, "\r"+ansiClearLine)
		q.shown = false
	}
	fmt.Fprintln(w, line)
}

// Stop ends the polling and clears the line; safe on nil and twice.
func (q *queueStatus) Stop() {
	if q == nil {
		return
	}
	q.cancel()
	<-q.done
	q.Clear()
}
