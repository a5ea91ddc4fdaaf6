package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Scope names the values of a step set built for one node (or one slot of a plan): key k
// in scope "w-3" is "w-3/k". A run that adds, removes or reboots many nodes builds one
// set per node, each in its own scope, so their values never mix. The empty scope is the
// run's root: key k is "k".
type Scope string

// Key returns the name of key k in the scope.
func (s Scope) Key(k string) string {
	if s == "" {
		return k
	}
	return string(s) + "/" + k
}

// In returns key k in scope s: pipeline.In(scope, keyServerID).
func In[T any](s Scope, k Key[T]) Key[T] { return Key[T](s.Key(string(k))) }

// Set is a step set built for one node: its steps, the scope of its values and how it is
// named in errors ("node w-3").
type Set struct {
	Scope Scope
	Title string
	Steps []Step
}

func (s Set) title() string {
	if s.Title != "" {
		return s.Title
	}
	return string(s.Scope)
}

// finishedKey records that the set in scope s finished step name of the fan tag:
// "<scope>/<tag>/<step>".
func finishedKey(s Scope, tag, name string) Key[bool] {
	return Key[bool](s.Key(tag + "/" + name))
}

// Together runs sets side by side: for each step name of the sets (every set has the same
// step names, in the same order), one step of that name runs that step of every set at
// once. A set that finished a step is recorded in its scope ("<scope>/<tag>/<step>"; tag
// is the group the steps go in, e.g. "batch-2"), so a resumed run redoes only the sets
// that had not finished it. The step fails when a set's step fails, with an error naming
// each set that failed; it is skipped when every set skipped it. Its Undo, if the sets'
// steps have one, undoes every set's step. Its description is the first set's, naming every set's scope
// ("drain w-1, w-2 (timeout 10m0s)").
func Together(tag string, sets ...Set) ([]Step, error) {
	if len(sets) == 0 {
		return nil, errors.New("together: no step sets")
	}
	first := sets[0].Steps
	for _, s := range sets {
		if s.Scope == "" {
			return nil, fmt.Errorf("together: set %q has no scope", s.title())
		}
		if len(s.Steps) != len(first) {
			return nil, fmt.Errorf("together: set %s has %d steps, set %s has %d", s.title(), len(s.Steps), sets[0].title(), len(first))
		}
		for i := range s.Steps {
			if s.Steps[i].Name != first[i].Name {
				return nil, fmt.Errorf("together: step %d of set %s is %q, of set %s %q", i+1, s.title(), s.Steps[i].Name, sets[0].title(), first[i].Name)
			}
		}
	}
	out := make([]Step, len(first))
	for i := range first {
		name := first[i].Name
		parts := make([]Set, len(sets))
		for j, s := range sets {
			parts[j] = Set{Scope: s.Scope, Title: s.title(), Steps: []Step{s.Steps[i]}}
		}
		st := Step{
			Name: name,
			Desc: func(v *Values) string { return describeAll(parts, v) },
			Do:   func(ctx context.Context, v *Values) error { return fan(ctx, v, tag, name, parts) },
		}
		if first[i].Undo != nil {
			st.Undo = func(ctx context.Context, v *Values) error {
				return each(parts, func(p Set) error {
					if p.Steps[0].Undo == nil {
						return nil
					}
					return p.Steps[0].Undo(ctx, v)
				})
			}
		}
		out[i] = st
	}
	return out, nil
}

// describeAll describes the step of every part in one line: the first part's description
// with its scope replaced by the list of the parts' scopes, or followed by the list when
// the description does not name the scope.
func describeAll(parts []Set, v *Values) string {
	names := make([]string, len(parts))
	for i, p := range parts {
		names[i] = string(p.Scope)
	}
	list := strings.Join(names, ", ")
	d := describe(parts[0].Steps[0], v)
	if len(parts) == 1 {
		return d
	}
	if strings.Contains(d, names[0]) {
		return strings.Replace(d, names[0], list, 1)
	}
	return d + " (" + list + ")"
}

// fan runs the one step of every part at once, skipping the parts recorded as finished.
func fan(ctx context.Context, v *Values, tag, name string, parts []Set) error {
	var mu sync.Mutex
	var skips []string
	ran := 0
	err := each(parts, func(p Set) error {
		done := finishedKey(p.Scope, tag, name)
		if ok, _, err := done.Lookup(v); err != nil || ok {
			return err
		}
		err := p.Steps[0].Do(ctx, v)
		var skip *SkipError
		switch {
		case errors.As(err, &skip):
			mu.Lock()
			skips = append(skips, p.title()+": "+skip.Reason)
			mu.Unlock()
		case err != nil:
			return err
		default:
			mu.Lock()
			ran++
			mu.Unlock()
		}
		return done.Set(v, true)
	})
	if err != nil {
		return err
	}
	if ran == 0 && len(skips) == len(parts) {
		return Skip("%s", strings.Join(skips, "; "))
	}
	return nil
}

// each runs f for every part at once and joins the errors, each naming its part.
func each(parts []Set, f func(Set) error) error {
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(p); err != nil {
				errs[i] = fmt.Errorf("%s: %w", p.title(), err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
