package worker

import (
	"maps"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Priors of the expected durations, used for a model until foreman ran a job of it.
const (
	PriorRunTime  = 30 * time.Second
	PriorLoadTime = 10 * time.Second
)

// durationWeight is the weight of a new sample in a moving average: about the last five
// jobs of a model count.
const durationWeight = 0.3

// durations learns, per model (ollama.NormalizeModel: "Tiny-A" and "tiny-a:latest" are
// one model), how long its jobs run and how long loading it takes (a
// swap's cost), as moving averages of the jobs this process ran. They live in memory: a
// restart begins again from the priors, which the first jobs quickly replace.
type durations struct {
	mu   sync.Mutex
	run  map[string]time.Duration
	load map[string]time.Duration
	// Past max models in a map, a new one first has those listed says the target lists
	// no more forgotten: model names made and removed again (`ollama cp`, `ollama rm`)
	// do not each stay for the process's life.
	max    int
	listed func(model string) bool
}

func newDurations(max int, listed func(model string) bool) *durations {
	return &durations{run: map[string]time.Duration{}, load: map[string]time.Duration{}, max: max, listed: listed}
}

// estimate is the expected run time of a job of model and the expected time to load it.
func (d *durations) estimate(model string) (run, load time.Duration) {
	model = ollama.NormalizeModel(model)
	d.mu.Lock()
	defer d.mu.Unlock()
	run, ok := d.run[model]
	if !ok {
		run = PriorRunTime
	}
	load, ok = d.load[model]
	if !ok {
		load = PriorLoadTime
	}
	return run, load
}

// observeRun learns a job's run time (without its model's load).
func (d *durations) observeRun(model string, took time.Duration) { d.observe(d.run, model, took) }

// observeLoad learns a load time of model.
func (d *durations) observeLoad(model string, took time.Duration) { d.observe(d.load, model, took) }

func (d *durations) observe(m map[string]time.Duration, model string, took time.Duration) {
	if took < 0 {
		return
	}
	model = ollama.NormalizeModel(model)
	d.mu.Lock()
	defer d.mu.Unlock()
	old, ok := m[model]
	if !ok {
		if len(m) >= d.max {
			maps.DeleteFunc(m, func(model string, _ time.Duration) bool { return !d.listed(model) })
		}
		m[model] = took // the first sample replaces the prior
		return
	}
	m[model] = old + time.Duration(durationWeight*float64(took-old))
}
