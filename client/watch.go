package client

import (
	"context"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// Watch follows a job's state changes: the channel gets the job's current state first,
// then every change, and closes after a terminal state or when ctx ends. It uses NATS
// when the client has it, else polling. An unknown job is an error at once. Should a
// later read of the job fail for good (an error answer other than 5xx or 429, an answer
// that is no job record, a read WithAnswerTimeout gave up on), the channel closes before
// a terminal state; WatchWhy tells why.
//
// Over NATS no event is dropped by the client, terminal ones included: a reader that falls
// behind slows delivery down (back-pressure), and nats.go buffers the events meanwhile.
//
// With id "" Watch follows every job until ctx ends: all state events over NATS, or, when
// polling, the changes among the newest 100 jobs. Should a reader fall so far behind that
// nats.go's buffer (by default 512Ki messages or 64 MiB) overflows, the events it drops
// are reported as a lost event (Event.Lost > 0, without JobID) ahead of the next event;
// re-read the jobs with Jobs then. So is a reconnect (foreman restarted, the network
// was cut): NATS keeps no events for a subscriber while it is away, and a lost event
// (Lost 1) comes as soon as the connection is back. A single-job watch reads its job
// again instead.
// Should the NATS connection close for good (nats.go gave up reconnecting), a lost
// event (Lost 1) says so, and a single-job watch reads its job at once and goes on
// polling at the poll interval. Watch("") notices within a second and goes on by
// polling, a poll interval later: its first poll
// tells the newest jobs' current states, but for those already told over NATS (jobs
// that did not change while the watch ran may be told then), so what changed while the
// connection was down is not missed.
// Should a poll of Watch("") fail for good (an error answer other than 5xx or 429, an
// answer that is no job list, a poll WithAnswerTimeout gave up on), the channel closes;
// WatchWhy tells why.
func (c *Client) Watch(ctx context.Context, id string) (<-chan Event, error) {
	ch, _, err := c.WatchWhy(ctx, id)
	return ch, err
}

// WatchWhy is Watch, and also tells why its channel closed: why waits until it has, and
// returns nil after a single job's terminal state, the context's error once ctx ended,
// else the error of the read that ended the watch (an *APIError refusing it for good, a
// *ForeignAnswerError, the *NoAnswerError of WithAnswerTimeout). The channel must be
// read to its close, as Watch's.
func (c *Client) WatchWhy(ctx context.Context, id string) (events <-chan Event, why func() error, err error) {
	var end watchEnd
	end.done = make(chan struct{})
	if id == "" {
		events, err = c.watchAll(ctx, &end)
	} else {
		events, err = c.watchJob(ctx, id, &end)
	}
	if err != nil {
		return nil, nil, err
	}
	return events, end.wait, nil
}

// watchEnd holds why a watch's channel closed, set before it closes.
type watchEnd struct {
	err  error
	done chan struct{}
}

// set records err as why the watch ended; the caller closes the channel after.
func (e *watchEnd) set(err error) {
	e.err = err
	close(e.done)
}

func (e *watchEnd) wait() error {
	<-e.done
	return e.err
}

func (c *Client) watchJob(ctx context.Context, id string, end *watchEnd) (<-chan Event, error) {
	f, err := c.follow(ctx, id, nil, false, nil)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event)
	go func() {
		defer close(ch)
		defer f.stop()
		var sent Event
		_, err := f.run(ctx, func(e Event) {
			select {
			case ch <- e:
				sent = e
			case <-ctx.Done():
			}
		}, nil)
		if err == nil && !sent.State.Terminal() {
			// The terminal state was read, but not taken: ctx ended first.
			err = ctx.Err()
		}
		end.set(err)
	}()
	return ch, nil
}

// natsCheckEvery is how often Watch("") over NATS looks whether its connection has
// closed for good (nats.go gave up reconnecting, or its owner closed it): no event comes
// on a closed connection, so the watch goes on by polling.
const natsCheckEvery = time.Second

func (c *Client) watchAll(ctx context.Context, end *watchEnd) (<-chan Event, error) {
	out := make(chan Event)
	send := func(e Event) bool {
		select {
		case out <- e:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if c.natsUp() && !c.pollingOnly {
		events, unsub, err := c.subscribe(ctx, broker.StateWildcard)
		if err != nil {
			return nil, err
		}
		go func() {
			defer close(out)
			// last holds the latest state seen of recent jobs, so that polling, should the
			// connection close, does not tell them again.
			last := map[string]Event{}
			check := time.NewTicker(c.natsCheckEvery)
			defer check.Stop()
			for {
				select {
				case <-ctx.Done():
					unsub()
					end.set(ctx.Err())
					return
				case e := <-events:
					if e.JobID != "" {
						if len(last) >= maxRemembered {
							clear(last)
						}
						last[e.JobID] = e
					}
					if !send(e) {
						unsub()
						end.set(ctx.Err())
						return
					}
				case <-check.C:
					if c.natsUp() {
						continue
					}
					unsub()
					end.set(c.pollAll(ctx, send, last, nil))
					return
				}
			}
		}()
		return out, nil
	}
	var first *JobList
	err := c.within(ctx, "GET /jobs", "", func(ctx context.Context) (err error) {
		first, err = c.Jobs(ctx, JobFilter{Limit: watchAllLimit})
		return err
	})
	if err != nil {
		return nil, err
	}
	go func() {
		defer close(out)
		end.set(c.pollAll(ctx, send, map[string]Event{}, first))
	}()
	return out, nil
}

// watchAllLimit is how many of the newest jobs Watch("") reads a poll.
const watchAllLimit = 100

// maxRemembered bounds the states Watch("") over NATS remembers for a switch to polling.
const maxRemembered = 4096

// pollAll tells the changes among the newest jobs, a list every poll interval, until ctx
// ends (its error returned) or a poll fails for good (that error); list is the first
// list, if read already. last holds the states already told.
func (c *Client) pollAll(ctx context.Context, send func(Event) bool, last map[string]Event, list *JobList) error {
	t := time.NewTicker(c.pollInterval)
	defer t.Stop()
	for {
		if list != nil {
			seen := make(map[string]Event, len(list.Jobs))
			// Oldest first, so events come in the order they happened.
			for i := len(list.Jobs) - 1; i >= 0; i-- {
				e := eventOfJob(&list.Jobs[i])
				seen[e.JobID] = e
				if prev, ok := last[e.JobID]; ok && prev.same(e) {
					continue
				}
				if !send(e) {
					return ctx.Err()
				}
			}
			// A job that left the newest jobs does not come back: forget it.
			last = seen
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		var l *JobList
		err := c.within(ctx, "GET /jobs", "", func(ctx context.Context) (err error) {
			l, err = c.Jobs(ctx, JobFilter{Limit: watchAllLimit})
			return err
		})
		switch {
		case err == nil:
			list = l
		case transient(err) || ctx.Err() != nil:
			list = nil // polled again next time
		default:
			// Failed for good (a 401 after a token changed, a wrong URL): every poll would
			// fail the same, and the watch would tell nothing for ever.
			return err
		}
	}
}
