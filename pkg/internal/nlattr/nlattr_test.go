package nlattr

import (
	"reflect"
	"slices"
	"testing"
)

// attr is one attribute: header, payload, padding to 4 bytes.
func attr(typ uint16, val ...byte) []byte { return Append(nil, typ, val...) }

func cat(bs ...[]byte) []byte { return slices.Concat(bs...) }

type seen struct {
	Type uint16
	Val  []byte
}

func TestIterator(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []byte
		want    []seen
		wantErr bool
	}{
		{name: "empty"},
		{name: "shorter than a header", in: []byte{8, 0, 1}},
		{name: "one", in: attr(1, 0xaa, 0xbb, 0xcc, 0xdd), want: []seen{{1, []byte{0xaa, 0xbb, 0xcc, 0xdd}}}},
		{name: "padded payloads", in: cat(attr(1, 7), attr(2, 1, 2, 3, 4, 5), attr(3)),
			want: []seen{{1, []byte{7}}, {2, []byte{1, 2, 3, 4, 5}}, {3, []byte{}}}},
		{name: "nested and byte-order flags cleared", in: cat(attr(0x8000|5, 1), attr(0x4000|6, 2)),
			want: []seen{{5, []byte{1}}, {6, []byte{2}}}},
		{name: "last attribute without its padding", in: attr(1, 9, 9, 9, 9, 9)[:9],
			want: []seen{{1, []byte{9, 9, 9, 9, 9}}}},
		{name: "trailing bytes short of a header", in: cat(attr(1, 1), []byte{0, 0}),
			want: []seen{{1, []byte{1}}}},
		{name: "length below the header", in: cat(attr(1, 1), []byte{3, 0, 2, 0}),
			want: []seen{{1, []byte{1}}}, wantErr: true},
		{name: "length zero", in: []byte{0, 0, 1, 0, 0, 0, 0, 0}, wantErr: true},
		{name: "length past the buffer", in: cat(attr(1, 1), attr(2, 1, 2, 3, 4)[:7]),
			want: []seen{{1, []byte{1}}}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []seen
			it := Iter(tc.in)
			for it.Next() {
				got = append(got, seen{it.Type(), it.Value()})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if err := it.Err(); (err != nil) != tc.wantErr {
				t.Errorf("error %v, want one: %v", err, tc.wantErr)
			}
			if it.Next() {
				t.Errorf("Next after the end is true")
			}
		})
	}
}

func TestIteratorAllocatesNothing(t *testing.T) {
	b := cat(attr(1, 1, 2, 3, 4), attr(0x8000|2, attr(3, 5)...), attr(4, 1, 2))
	var sum int
	allocs := testing.AllocsPerRun(100, func() {
		it := Iter(b)
		for it.Next() {
			if it.Type() == 2 {
				in := Iter(it.Value())
				for in.Next() {
					sum += len(in.Value())
				}
			}
			sum += len(it.Value())
		}
		if it.Err() != nil {
			t.Fatal(it.Err())
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per walk, want 0", allocs)
	}
}
