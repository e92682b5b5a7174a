package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// backstopFactor stretches the poll interval while NATS or webhooks deliver the events:
// polling then only catches a lost delivery.
const backstopFactor = 15

// cancelTimeout bounds the DELETE sent after the caller's context ended.
const cancelTimeout = 5 * time.Second

// submitTimeout bounds a submit that outlives the caller's context (WithCancelOnContextDone).
const submitTimeout = 45 * time.Second

// Submit queues a job and waits until it has finished: it returns the result of a done
// job, a *JobError (errors.Is ErrJobFailed) for a failed or canceled one, the context's
// error, or, with WithAnswerTimeout, a *NoAnswerError when foreman left its submit or a
// read of the job unanswered that long. See the package documentation for how it waits.
func (c *Client) Submit(ctx context.Context, req SubmitRequest) (*Result, error) {
	var hook *receiver
	if !req.hasWebhook() && c.useWebhook() {
		// A receiver that cannot bind is not an error: polling still works.
		if h, err := c.listenWebhook(); err == nil {
			hook = h
			defer func() {
				if hook != nil {
					c.retire(hook)
				}
			}()
			req.WebhookURL = hook.url
			if req.OnState == nil {
				req.WebhookEvents = []State{StateDone, StateFailed, StateCanceled}
			} else {
				req.WebhookEvents = nil
			}
		}
	}
	body, err := req.body()
	if err != nil {
		if hook != nil {
			hook.close() // no job was made
			hook = nil
		}
		return nil, err
	}
	sctx := ctx
	if c.cancelOnDone {
		// The job may be created just as the caller's context ends; its id must still
		// come back, or the job could not be canceled. The submit itself stays bounded.
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), submitTimeout)
		defer cancel()
	}
	// noAnswer: the submit was bounded by WithAnswerTimeout (no SubmitTimeout) and
	// foreman took it and answered nothing within it; submitReq names it as it went
	// (on NATS, unless it went on to POST /jobs). notSent: it went by HTTP alone, whose
	// request was not sent within the bound (its connection not made): it never reached
	// foreman, as a refused connection, and no job was made.
	noAnswer, notSent := func() bool { return false }, func() bool { return false }
	submitReq := func() string { return "POST /jobs" }
	if limit := cmp.Or(req.SubmitTimeout, c.answerTimeout); limit > 0 {
		outer := sctx
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(sctx, limit)
		defer cancel()
		if req.SubmitTimeout <= 0 {
			bounded := sctx
			noAnswer = func() bool { return bounded.Err() != nil && outer.Err() == nil }
			var tried, took atomic.Bool
			sctx = httptrace.WithClientTrace(tookTrace(sctx, &took), &httptrace.ClientTrace{
				GetConn: func(string) { tried.Store(true) },
			})
			if c.natsFits(body, req.IdempotencyKey) {
				submitReq = func() string {
					if tried.Load() {
						return "POST /jobs"
					}
					return "NATS " + broker.SubmitSubject
				}
			} else {
				notSent = func() bool { return !took.Load() }
			}
		}
	}
	id, replayed, err := c.submit(sctx, body, req.IdempotencyKey)
	if err != nil && hook != nil && refusedWebhook(err) {
		// foreman's webhook network policy refuses the receiver's address (a loopback
		// receiver is refused by default): wait without it, by polling, and offer no
		// receiver again.
		c.webhookRefused.Store(true)
		hook.close()
		hook = nil
		req.WebhookURL, req.WebhookEvents = "", nil
		if body, err = req.body(); err != nil {
			return nil, err
		}
		id, replayed, err = c.submit(sctx, body, req.IdempotencyKey)
	}
	var refused *APIError
	if err != nil && hook != nil && errors.As(err, &refused) {
		// foreman refused the submit: no job names the receiver.
		hook.close()
		hook = nil
	}
	if err != nil {
		if noAnswer() && notSent() {
			return nil, &ConnectionError{URL: c.shown, Err: &notSentError{req: "POST /jobs", within: c.answerTimeout}}
		}
		if noAnswer() {
			return nil, c.noAnswer(submitReq(), "", false, nil)
		}
		return nil, err
	}
	if replayed && hook != nil {
		// The key returned an earlier submit's job, whose events go to that submit's
		// receiver, not this one's: wait by polling.
		hook.close()
		hook = nil
	}
	return c.wait(ctx, id, hook, true, req.OnState, req.OnWaitError)
}

// refusedWebhook: foreman answered 400 about state_webhook_url, the receiver's URL.
func refusedWebhook(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusBadRequest && strings.Contains(ae.Message, "state_webhook_url")
}

// Wait waits until an existing job has finished, like Submit, by NATS or polling.
func (c *Client) Wait(ctx context.Context, id string) (*Result, error) {
	return c.wait(ctx, id, nil, false, nil, nil)
}

func (c *Client) useWebhook() bool {
	return !c.pollingOnly && c.nc == nil && !c.webhookRefused.Load() && (c.webhookAddrSet || c.loopback())
}

// wait waits for job id; submitted says Submit just made it (see follow).
func (c *Client) wait(ctx context.Context, id string, hook *receiver, submitted bool, onState func(Event), onErr func(error)) (*Result, error) {
	f, err := c.follow(ctx, id, hook, submitted, onErr)
	if err == nil {
		defer f.stop()
		var j *Job
		if j, err = f.run(ctx, onState, onErr); err == nil {
			if j.State != StateDone {
				return nil, &JobError{Job: j}
			}
			return c.result(ctx, j, onErr)
		}
	}
	if ctx.Err() != nil {
		if c.cancelOnDone {
			c.cancelDetached(id)
		}
		return nil, fmt.Errorf("client: waiting for job %s: %w", id, ctx.Err())
	}
	return nil, err
}

// cancelDetached cancels a job after the caller's context is gone.
func (c *Client) cancelDetached(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), cancelTimeout)
	defer cancel()
	_, _ = c.Cancel(ctx, id) // 409: it ended meanwhile, which is fine
}

// follower tracks one job: events pushed by NATS or a webhook receiver, plus polling.
type follower struct {
	c        *Client
	id       string
	events   <-chan Event
	clockOff <-chan time.Duration // a webhook receiver's deliveries are stamped off this clock
	overNATS bool                 // events come over the NATS connection
	unsub    func()
	interval time.Duration
	first    *Job
	last     Event
	seen     bool
}

// follow subscribes to the job's events first and reads the job second, so a state reached
// before the subscription existed is still seen. For a job Submit just made (submitted),
// a read that fails for now (foreman restarting, its store electing a leader: transient)
// is told to onErr and made again briskly (a client living on events may poll once an
// hour, while the job's events wait for this read): the job exists, and a Submit failing
// there would have its caller submit it again. For
// Wait and Watch the first read's failure is the caller's answer (a wrong URL, a foreman
// down), as before.
func (c *Client) follow(ctx context.Context, id string, hook *receiver, submitted bool, onErr func(error)) (*follower, error) {
	f := &follower{c: c, id: id, interval: c.pollInterval, unsub: func() {}}
	switch {
	case hook != nil:
		f.events, f.clockOff = hook.events, hook.clockOff
	case c.natsUp() && !c.pollingOnly:
		// If the subscription fails (e.g. a closed connection), polling still works.
		if ch, unsub, err := c.subscribe(ctx, broker.StateSubject(id)); err == nil {
			f.events, f.unsub, f.overNATS = ch, unsub, true
		}
	}
	if f.events != nil {
		f.interval *= backstopFactor
	}
	wait := min(briskFirst, c.pollInterval)
	for {
		j, err := c.readJob(ctx, id)
		if err == nil {
			f.first = j
			return f, nil
		}
		if !submitted || !transient(err) || ctx.Err() != nil {
			f.unsub()
			return nil, err
		}
		if onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(retryWait(err, wait)):
		}
		wait = min(2*wait, briskLast, c.pollInterval)
	}
}

func (f *follower) stop() { f.unsub() }

// run reports every new state to emit, and every failed read of the job it waits on to
// onErr (both optional), and returns the job's final record.
func (f *follower) run(ctx context.Context, emit func(Event), onErr func(error)) (*Job, error) {
	show := func(e Event) {
		if f.seen && (e.same(f.last) || e.behind(f.last)) {
			return
		}
		f.seen, f.last = true, e
		if emit != nil {
			emit(e)
		}
	}
	j := f.first
	show(eventOfJob(j))
	if j.State.Terminal() {
		return j, nil
	}
	interval := f.interval
	final := false // a terminal event came: the final record is read until it is had
	// hurry: a read is due now (a terminal event came, or events were lost, maybe this
	// job's); one that fails for now (or, after a terminal event, shows the job still
	// running) is made again briskly, whatever the poll interval (an hour, for a client
	// that lives on events), until it is had.
	hurry := false
	t := time.NewTimer(interval)
	defer t.Stop()
	readNow := func() {
		hurry, interval = true, min(briskFirst, f.c.pollInterval)
		t.Reset(0)
	}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case off := <-f.clockOff:
			// The receiver refuses foreman's deliveries for their timestamps: no event
			// comes, so poll, from now on.
			f.clockOff, f.interval = nil, f.c.pollInterval
			if onErr != nil {
				onErr(clockError(off))
			}
			readNow()
		case e := <-f.events:
			if e.Lost > 0 {
				// Events were lost, maybe this job's: read the job now.
				if f.overNATS && !f.c.natsUp() {
					// The connection closed for good: no event comes, so poll.
					f.interval = f.c.pollInterval
				}
				readNow()
				continue
			}
			if e.JobID != f.id {
				continue
			}
			show(e)
			if e.State.Terminal() && !final {
				// Read the final record (with its result) at once.
				final = true
				readNow()
			}
		case <-t.C:
			j, err := f.c.readJob(ctx, f.id)
			next := interval
			switch {
			case err != nil && transient(err) && ctx.Err() == nil:
				if onErr != nil {
					onErr(err)
				}
				next = retryWait(err, interval)
			case err != nil:
				return nil, err
			case j.State.Terminal():
				show(eventOfJob(j))
				return j, nil
			case !final:
				show(eventOfJob(j))
				// The read that was due is had: back to the backstop, from this read on.
				hurry, interval = false, f.interval
				next = interval
			}
			// else the record lags behind the terminal event told (a replica's copy): it
			// is read again, and not told, which would tell the job's states backwards.
			t.Reset(next)
			if hurry {
				interval = min(2*interval, briskLast, f.c.pollInterval)
			}
		}
	}
}

// briskFirst and briskLast bound the waits between reads of a job that are due now but
// fail for now (each twice the one before), unless the poll interval is shorter: the
// first read of a job Submit made, the read of its final record after its terminal event,
// the read after events were lost.
const (
	briskFirst = 50 * time.Millisecond
	briskLast  = 2 * time.Second
)

// retryWait is the wait before a read that failed for now with err is made again: wait,
// or longer when foreman asked for it (a 503's or 429's Retry-After: a store electing a
// leader says how long it takes), up to maxRetryWait.
func retryWait(err error, wait time.Duration) time.Duration {
	var ae *APIError
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		return max(wait, min(ae.RetryAfter, maxRetryWait))
	}
	return wait
}

// maxRetryWait bounds how long a read waits because a Retry-After asked for it.
const maxRetryWait = 30 * time.Second

// transient errors are worth another poll: foreman restarting (an answer cut short) or
// briefly unreachable.
func transient(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests
	}
	return errors.Is(err, ErrUnreachable) || errors.Is(err, ErrCutShort)
}

// subscribe relays the state events on subject, in order, and the client drops none: the
// NATS callback waits until the reader takes each event or the subscription ends, while
// nats.go buffers the following messages (by default up to 512Ki messages or 64 MiB per
// subscription). Should that buffer overflow, nats.go drops messages; the loss is then
// reported as a lost event (Event.Lost > 0, no JobID) ahead of the next event. So is a
// reconnect: core NATS keeps nothing for a subscriber while its connection is down (a
// foreman restarting, a network cut), and the events published meanwhile never come. It
// is reported as soon as the connection is back, and ahead of any event that came over
// the new connection. A close for good (nats.go gave up reconnecting) is reported too:
// no event comes after it.
func (c *Client) subscribe(ctx context.Context, subject string) (<-chan Event, func(), error) {
	ch := make(chan Event)
	done := make(chan struct{})
	send := func(e Event) bool {
		select {
		case ch <- e:
			return true
		case <-done:
			return false
		}
	}
	// reconnected reports, once per reconnect, that the connection came back since the
	// subscription began or the last report. nats.go counts the reconnect before it
	// subscribes again on the new connection, so the callback sees it before any message
	// that connection brings.
	// The status listener is registered before the count is read: a reconnect between
	// the two is then told, not lost.
	status := c.nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	var reconnects atomic.Uint64
	reconnects.Store(c.nc.Stats().Reconnects)
	reconnected := func() bool {
		now := c.nc.Stats().Reconnects
		for {
			seen := reconnects.Load()
			if now <= seen {
				return false
			}
			if reconnects.CompareAndSwap(seen, now) {
				return true
			}
		}
	}
	// tellReconnect sends the report of a reconnect, if one is due; the callback and the
	// status reader below take turns, so that the report goes ahead of the next event.
	var telling sync.Mutex
	tellReconnect := func() bool {
		telling.Lock()
		defer telling.Unlock()
		return !reconnected() || send(reconnectEvent())
	}
	reported := 0 // only the callback uses it, and nats.go runs one callback at a time
	sub, err := c.nc.Subscribe(subject, func(m *nats.Msg) {
		if !tellReconnect() {
			return
		}
		if n, err := m.Sub.Dropped(); err == nil && n > reported {
			lost := n - reported
			reported = n
			if !send(lostEvent(lost)) {
				return
			}
		}
		if e, ok := stateEvent(m); ok {
			send(e)
		}
	})
	if err != nil {
		c.nc.RemoveStatusListener(status)
		return nil, nil, fmt.Errorf("client: subscribe %s: %w", subject, err)
	}
	// A reconnect with no event after it (the job that was watched finished meanwhile)
	// is told all the same.
	go func() {
		for s := range status {
			if !tellReconnect() {
				return
			}
			if s == nats.CLOSED {
				telling.Lock()
				send(closedEvent())
				telling.Unlock()
				return
			}
		}
	}()
	var once sync.Once
	unsub := func() {
		once.Do(func() {
			close(done) // frees a callback or the status reader waiting for the reader
			_ = sub.Unsubscribe()
			c.nc.RemoveStatusListener(status) // ends the status reader
		})
	}
	if c.statePendingLimit > 0 {
		_ = sub.SetPendingLimits(c.statePendingLimit, -1)
	}
	// The flush proves the subscription is in place; a NATS that stopped answering holds
	// it up to nats.go's own bound for Flush, or until the caller's context ends.
	fctx, cancel := context.WithTimeout(ctx, subscribeFlushTimeout)
	defer cancel()
	if err := c.nc.FlushWithContext(fctx); err != nil {
		unsub()
		return nil, nil, fmt.Errorf("client: subscribe %s: %w", subject, err)
	}
	return ch, unsub, nil
}

// subscribeFlushTimeout bounds subscribe's flush, as nats.go's Flush bounds its own.
const subscribeFlushTimeout = 10 * time.Second

// jobsStream is the stream behind broker.JobsBucket (a KV bucket's stream is KV_<bucket>):
// the state events are its republishes of the job records.
const jobsStream = "KV_" + broker.JobsBucket

// stateEvent is the event a message on a state subject carries, if it is one: a
// JetStream republish of a job record (headers Nats-Stream and Nats-Sequence) with a job
// id and a state. Anything else on the subject is ignored: foreman's submit service
// answers a NATS client on whatever reply subject it named, a job's state subject
// included, and such a reply carries no headers.
func stateEvent(m *nats.Msg) (Event, bool) {
	if m.Header.Get(nats.JSStream) != jobsStream || m.Header.Get(nats.JSSequence) == "" {
		return Event{}, false
	}
	e, err := eventOfRecord(m.Data)
	return e, err == nil
}
