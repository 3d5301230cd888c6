"""The pocket benchmark: MBPP-format tasks that a pocket-sized code model can learn to pass.

Tasks come from a catalogue of function families (arithmetic, comparisons, conditionals,
loops, lists, sets, strings, dicts). A task of a family is the family's code template with a
random function name, random parameter names and random constants; its text is one of the
family's phrasings; its asserts call the reference code on random inputs and record what it
returns. Everything is drawn from `random.Random` streams derived from the seed, so the same
seed gives the same tasks in any process.

Splits are drawn test → validation → train (the held-out splits first, so they do not change
when the train size does). A validation or test task whose normalised text or code already
appeared in an earlier split, or earlier in its own, is redrawn; a train task whose text or
code appears in validation or test is redrawn (train tasks may repeat one another). Families
take turns within a split, so any run of `len(FAMILIES)` consecutive tasks covers them all.
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from string import Template

from bitfront.data.mbpp import MBPPTask
from bitfront.errors import DataError

SPLIT_SIZES = {"test": 240, "validation": 96, "train": 4800}
TASK_ID_BASE = {"test": 10_000, "validation": 20_000, "train": 100_000}  # ids are base + 1, ...
ASSERTS = 3
MAX_ASSERT_CHARS = 100
_SPLIT_ORDER = ("test", "validation", "train")
_MAX_DRAWS = 1000  # draws of a fresh task, or of a task's test inputs, before giving up
_PATIENCE = 20  # draws of test inputs that insist on a new expected value

_OPENERS = ("Write a function to", "Write a python function to", "Create a function to",
            "Implement a function to", "Define a function to", "Write a short function to")
_CALC = ("", "get_", "find_", "calc_", "compute_")
_CHECK = ("", "is_", "check_", "verify_")
_MAKE = ("", "get_", "make_", "build_", "create_")

_INT = ("n", "m", "a", "b", "k", "x", "num", "val")
_LIST = ("nums", "lst", "items", "arr", "values", "numbers", "xs", "data")
_STR = ("s", "text", "word", "string", "st", "phrase", "line", "name")
_SENTENCE = ("s", "text", "sentence", "line", "phrase", "st")
_WORD_LIST = ("words", "parts", "names", "tokens", "strings", "labels")
_DICT = ("d", "table", "scores", "prices", "ages", "mapping")
_WORDS = ("apple", "level", "code", "python", "radar", "data", "noon", "hello", "world",
          "kayak", "tree", "moon", "sun", "cat", "dog", "bird", "book", "map", "loop", "key",
          "door", "red", "blue", "green", "civic", "refer", "madam", "note", "star", "rotor")
_PALINDROMES = tuple(w for w in _WORDS if w == w[::-1])
_NON_PALINDROMES = tuple(w for w in _WORDS if w != w[::-1])


@dataclass(frozen=True)
class Family:
    """One kind of task. `texts` (after an opener) and `body` are `string.Template`s over
    the parameter slots of `params` (each drawn from its name vocabulary), `$f` (the function
    name: a prefix plus a core) and the reprs of the constants `consts` draws; `inputs` draws
    the arguments of one test call given those constants."""

    name: str
    texts: tuple[str, ...]
    params: dict[str, tuple[str, ...]]
    body: str
    cores: tuple[str, ...]
    inputs: Callable[[random.Random, dict], tuple]
    consts: Callable[[random.Random], dict] = lambda rng: {}
    prefixes: tuple[str, ...] = _CALC

    @property
    def code(self) -> str:
        """The code template: a def line over the parameter slots, then the body."""
        params = ", ".join(f"${slot}" for slot in self.params)
        return f"def $f({params}):\n{textwrap.indent(self.body, '    ')}\n"


def _ints(rng: random.Random, lo: int = 0, hi: int = 20, size: tuple[int, int] = (2, 6),
          ) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(*size))]


def _letters(rng: random.Random, alphabet: str = "abcde", size: tuple[int, int] = (3, 7)) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(*size)))


def _words(rng: random.Random, size: tuple[int, int] = (2, 4)) -> list[str]:
    return rng.sample(_WORDS, rng.randint(*size))


def _dict(rng: random.Random, keys: str = "abcde", size: tuple[int, int] = (1, 4),
          ) -> dict[str, int]:
    return {key: rng.randint(0, 20) for key in sorted(rng.sample(keys, rng.randint(*size)))}


def _k(lo: int, hi: int) -> Callable[[random.Random], dict]:
    return lambda rng: {"k": rng.randint(lo, hi)}


def _range_consts(rng: random.Random) -> dict:
    lo = rng.randint(0, 20)
    return {"lo": lo, "hi": lo + rng.randint(2, 12)}


def _pair(rng: random.Random) -> dict:
    big, small = rng.choice((("big", "small"), ("high", "low"), ("yes", "no"), ("hot", "cold"),
                             ("up", "down"), ("pass", "fail"), ("over", "under")))
    return {"k": rng.randint(0, 20), "big": big, "small": small}


def _char(rng: random.Random) -> dict:
    return {"c": rng.choice("abcde")}


def _sign_input(rng: random.Random, _: dict) -> tuple:
    return (rng.choice((0, rng.randint(-20, -1), rng.randint(1, 20))),)


def _multiple_input(rng: random.Random, c: dict) -> tuple:
    return (rng.randint(0, 12) * c["k"] if rng.random() < 0.5 else rng.randint(1, 99),)


def _palindrome_input(rng: random.Random, _: dict) -> tuple:
    return (rng.choice(_PALINDROMES if rng.random() < 0.5 else _NON_PALINDROMES),)


def _duplicates_input(rng: random.Random, _: dict) -> tuple:
    values = rng.sample(range(10), rng.randint(3, 5))
    if rng.random() < 0.5:
        values.append(rng.choice(values))
        rng.shuffle(values)
    return (values,)


def _two_lists(rng: random.Random, _: dict) -> tuple:
    size = rng.randint(2, 5)
    return _ints(rng, 0, 9, (size, size)), _ints(rng, 0, 9, (size, size))


FAMILIES: tuple[Family, ...] = (
    # arithmetic
    Family("add_const", ("add $k to the number $n", "return $n plus $k",
                         "increase a given number by $k", "find the sum of a number and $k"),
           {"n": _INT}, "return $n + $k", ("add_const", "plus_k", "increase", "add_value"),
           lambda r, c: (r.randint(-20, 50),), _k(2, 19)),
    Family("mul_const", ("multiply the number $n by $k", "return $n times $k",
                         "find $k times a given number", "scale a number by a factor of $k"),
           {"n": _INT}, "return $n * $k", ("multiply", "times_k", "scale", "mul_const"),
           lambda r, c: (r.randint(-10, 20),), _k(2, 12)),
    Family("affine", ("multiply $n by $k and then add $c", "return $k times $n plus $c",
                      "compute $k times a number plus $c"),
           {"n": _INT}, "return $n * $k + $c", ("affine", "linear", "scale_shift", "transform"),
           lambda r, c: (r.randint(-10, 20),),
           lambda r: {"k": r.randint(2, 9), "c": r.randint(1, 20)}),
    Family("power", ("raise $n to the power $k", "return the number $n to the power of $k",
                     "compute a number raised to the power $k"),
           {"n": _INT}, "return $n ** $k", ("power", "raise_power", "pow_k", "exponent"),
           lambda r, c: (r.randint(-6, 9),), _k(2, 4)),
    Family("floordiv", ("find the integer quotient of $n divided by $k",
                        "return $n divided by $k, rounded down",
                        "perform floor division of a number by $k"),
           {"n": _INT}, "return $n // $k", ("quotient", "floor_div", "int_divide", "div_k"),
           lambda r, c: (r.randint(0, 100),), _k(2, 9)),
    Family("add_two", ("add two numbers $a and $b", "find the sum of $a and $b",
                       "return the total of two numbers $a and $b"),
           {"a": _INT, "b": _INT}, "return $a + $b", ("add", "sum_two", "add_numbers", "plus"),
           lambda r, c: (r.randint(-20, 50), r.randint(-20, 50))),
    # comparisons and conditionals
    Family("divisible", ("check whether $n is divisible by $k",
                         "check if a number is a multiple of $k",
                         "return True if a number is divisible by $k, else False"),
           {"n": _INT}, "return $n % $k == 0", ("divisible", "multiple", "divisible_by_k",
                                                 "multiple_of_k"),
           _multiple_input, _k(2, 9), _CHECK),
    Family("greater", ("check whether $n is greater than $k", "check if a number exceeds $k",
                       "return True if a number is larger than $k"),
           {"n": _INT}, "return $n > $k", ("greater", "above", "bigger", "over_limit"),
           lambda r, c: (c["k"] + r.randint(-10, 10),), _k(0, 30), _CHECK),
    Family("in_range", ("check whether $n is between $lo and $hi inclusive",
                        "check if a number lies in the range $lo to $hi, both ends included",
                        "return True if $lo <= $n <= $hi"),
           {"n": _INT}, "return $lo <= $n <= $hi", ("in_range", "between", "within", "inside"),
           lambda r, c: (r.randint(c["lo"] - 5, c["hi"] + 5),), _range_consts, _CHECK),
    Family("clamp", ("clamp $n to the range $lo to $hi",
                     "limit a number to at least $lo and at most $hi",
                     "return a number, raised to $lo if smaller and lowered to $hi if larger"),
           {"n": _INT}, "return min(max($n, $lo), $hi)", ("clamp", "limit", "bound", "clip"),
           lambda r, c: (r.randint(c["lo"] - 10, c["hi"] + 10),), _range_consts),
    Family("label", ("return $big if $n is greater than $k, otherwise $small",
                     "classify a number as $big when it is above $k and as $small otherwise",
                     "label a number $big if it exceeds $k, else $small"),
           {"n": _INT}, "if $n > $k:\n    return $big\nreturn $small",
           ("label", "classify", "grade", "rate"),
           lambda r, c: (c["k"] + r.randint(-10, 10),), _pair),
    Family("sign", ("return 'positive', 'negative' or 'zero' according to the sign of $n",
                    "describe the sign of the number $n as 'positive', 'negative' or 'zero'",
                    "tell whether $n is 'positive', 'negative' or 'zero'"),
           {"n": _INT},
           "if $n > 0:\n    return 'positive'\nif $n < 0:\n    return 'negative'\nreturn 'zero'",
           ("sign", "sign_of", "number_sign", "describe_sign"), _sign_input),
    Family("max_two", ("find the larger of two numbers $a and $b",
                       "return the maximum of $a and $b", "return the bigger one of $a and $b"),
           {"a": _INT, "b": _INT}, "if $a > $b:\n    return $a\nreturn $b",
           ("larger", "max_of_two", "bigger", "maximum"),
           lambda r, c: (r.randint(-20, 50), r.randint(-20, 50))),
    # loops
    Family("sum_to_n", ("find the sum of all integers from 1 to $n",
                        "add up the numbers 1 through $n", "compute 1 + 2 + ... + $n"),
           {"n": _INT}, "total = 0\nfor i in range(1, $n + 1):\n    total += i\nreturn total",
           ("sum_to_n", "triangular", "sum_up_to", "series_sum"),
           lambda r, c: (r.randint(0, 20),)),
    Family("factorial", ("compute the factorial of $n",
                         "find the product of all integers from 1 to $n",
                         "return $n factorial"),
           {"n": _INT}, "result = 1\nfor i in range(2, $n + 1):\n    result *= i\nreturn result",
           ("factorial", "fact", "product_to_n", "factorial_of"),
           lambda r, c: (r.randint(0, 10),)),
    Family("digit_sum", ("find the sum of the digits of $n",
                         "add up the digits of the non-negative integer $n",
                         "return the total of all digits in $n"),
           {"n": _INT},
           "total = 0\nwhile $n > 0:\n    total += $n % 10\n    $n //= 10\nreturn total",
           ("digit_sum", "sum_digits", "digits_total", "add_digits"),
           lambda r, c: (r.randint(0, 99999),)),
    Family("multiples", ("list the first $n multiples of $k",
                         "build a list of the first $n multiples of $k",
                         "return a list holding $k times 1, 2, ..., $n"),
           {"n": _INT}, "return [$k * i for i in range(1, $n + 1)]",
           ("multiples", "multiples_of_k", "table", "times_table"),
           lambda r, c: (r.randint(0, 6),), _k(2, 9), _MAKE),
    # lists
    Family("sum_list", ("find the sum of the numbers in the list $xs",
                        "add up all elements of $xs", "return the total of the list $xs"),
           {"xs": _LIST}, "return sum($xs)", ("sum_list", "list_sum", "total", "sum_all"),
           lambda r, c: (_ints(r),)),
    Family("max_list", ("find the largest number in the list $xs",
                        "return the maximum element of $xs", "find the biggest value in $xs"),
           {"xs": _LIST}, "return max($xs)", ("max_list", "largest", "biggest", "max_value"),
           lambda r, c: (_ints(r),)),
    Family("count_greater", ("count the elements of a list that are greater than $k",
                             "count how many numbers in a list exceed $k",
                             "find the number of list items larger than $k"),
           {"xs": _LIST},
           "count = 0\nfor v in $xs:\n    if v > $k:\n        count += 1\nreturn count",
           ("count_greater", "count_above", "num_over", "count_big"),
           lambda r, c: (_ints(r),), _k(0, 15)),
    Family("filter_less", ("return the elements of a list that are smaller than $k",
                           "keep only the numbers below $k in a list",
                           "filter a list down to the values less than $k"),
           {"xs": _LIST}, "return [v for v in $xs if v < $k]",
           ("filter_less", "below", "small_values", "keep_small"),
           lambda r, c: (_ints(r),), _k(3, 15)),
    Family("filter_divisible", ("return the elements of a list that are divisible by $k",
                                "keep the multiples of $k from a list",
                                "filter a list down to the numbers divisible by $k"),
           {"xs": _LIST}, "return [v for v in $xs if v % $k == 0]",
           ("multiples_in", "divisible_items", "filter_multiples", "keep_divisible"),
           lambda r, c: (_ints(r),), _k(2, 5)),
    Family("map_add", ("add $k to every element of a list",
                       "return a list with $k added to each number",
                       "increase each item of a list by $k"),
           {"xs": _LIST}, "return [v + $k for v in $xs]",
           ("add_to_all", "shift_list", "increment_all", "map_add"),
           lambda r, c: (_ints(r, size=(1, 5)),), _k(1, 9)),
    Family("first_k", ("return the first $k elements of a list",
                       "take the first $k items of a list", "get the leading $k values of a list"),
           {"xs": _LIST}, "return $xs[:$k]", ("first_k", "head", "take", "leading"),
           lambda r, c: (_ints(r),), _k(1, 4)),
    Family("sort_desc", ("sort the list $xs in descending order",
                         "return the numbers of $xs sorted from largest to smallest",
                         "order the elements of $xs from high to low"),
           {"xs": _LIST}, "return sorted($xs, reverse=True)",
           ("sort_desc", "sort_descending", "reverse_sort", "high_to_low"),
           lambda r, c: (_ints(r),)),
    Family("contains", ("check whether $k is in a list", "check if a list contains the number $k",
                        "return True if $k appears in a list"),
           {"xs": _LIST}, "return $k in $xs", ("contains", "has_value", "in_list", "member"),
           lambda r, c: (_ints(r, 0, 6, (1, 4)),), _k(0, 6), _CHECK),
    Family("sum_greater", ("find the sum of the elements of a list that are greater than $k",
                           "add up the numbers in a list that exceed $k",
                           "total the list items larger than $k"),
           {"xs": _LIST},
           "total = 0\nfor v in $xs:\n    if v > $k:\n        total += v\nreturn total",
           ("sum_greater", "sum_above", "total_over", "sum_big"),
           lambda r, c: (_ints(r),), _k(0, 15)),
    Family("product_list", ("find the product of all numbers in $xs",
                            "multiply together the elements of $xs",
                            "return the product of the list $xs"),
           {"xs": _LIST}, "result = 1\nfor v in $xs:\n    result *= v\nreturn result",
           ("product", "list_product", "multiply_all", "prod"),
           lambda r, c: (_ints(r, 1, 9, (1, 4)),)),
    Family("all_greater", ("check whether all elements of a list are greater than $k",
                           "check if every number in a list exceeds $k",
                           "return True if each item of a list is larger than $k"),
           {"xs": _LIST}, "return all(v > $k for v in $xs)",
           ("all_greater", "all_above", "every_over", "all_big"),
           lambda r, c: (_ints(r, c["k"] - 2, c["k"] + 12, (1, 4)),), _k(0, 10), _CHECK),
    Family("pair_sums", ("add the lists $xs and $ys element by element",
                         "return the element-wise sum of the lists $xs and $ys",
                         "sum $xs and $ys position by position"),
           {"xs": _LIST, "ys": _LIST}, "return [x + y for x, y in zip($xs, $ys)]",
           ("pair_sums", "add_lists", "elementwise_sum", "zip_add"), _two_lists),
    # sets
    Family("unique_sorted", ("return the distinct elements of $xs in increasing order",
                             "remove duplicates from $xs and sort the result",
                             "list the different values of $xs from smallest to largest"),
           {"xs": _LIST}, "return sorted(set($xs))",
           ("unique_sorted", "distinct", "dedupe", "unique_values"),
           lambda r, c: (_ints(r, 0, 6, (3, 7)),)),
    Family("common", ("find the common elements of the lists $xs and $ys, sorted",
                      "return the sorted list of values that appear in both $xs and $ys",
                      "list in increasing order the numbers shared by $xs and $ys"),
           {"xs": _LIST, "ys": _LIST}, "return sorted(set($xs) & set($ys))",
           ("common", "shared", "intersection", "common_items"),
           lambda r, c: (_ints(r, 0, 9, (2, 5)), _ints(r, 0, 9, (2, 5)))),
    Family("count_distinct", ("count the distinct values in $xs",
                              "find how many different numbers $xs contains",
                              "return the number of unique elements of $xs"),
           {"xs": _LIST}, "return len(set($xs))",
           ("count_distinct", "num_unique", "distinct_count", "unique_count"),
           lambda r, c: (_ints(r, 0, 6, (2, 7)),)),
    Family("has_duplicates", ("check whether the list $xs contains any duplicates",
                              "check if some value occurs more than once in $xs",
                              "return True if $xs has a repeated element"),
           {"xs": _LIST}, "return len(set($xs)) != len($xs)",
           ("duplicates", "has_repeats", "repeated", "not_unique"), _duplicates_input,
           prefixes=_CHECK),
    # strings
    Family("reverse_string", ("reverse the string $s",
                              "return the characters of $s in reverse order",
                              "write $s backwards"),
           {"s": _STR}, "return $s[::-1]", ("reverse", "reverse_string", "backwards", "flip"),
           lambda r, c: (r.choice(_NON_PALINDROMES),), prefixes=_MAKE),
    Family("palindrome", ("check whether the string $s is a palindrome",
                          "check if $s reads the same forwards and backwards",
                          "return True if $s equals its reverse"),
           {"s": _STR}, "return $s == $s[::-1]", ("palindrome", "mirror", "symmetric",
                                                  "same_backwards"),
           _palindrome_input, prefixes=_CHECK),
    Family("count_char", ("count the occurrences of the character $c in a string",
                          "count how many times $c appears in a string",
                          "find the number of $c characters in a string"),
           {"s": _STR}, "return $s.count($c)", ("count_char", "char_count", "count_letter",
                                                "occurrences_of"),
           lambda r, c: (_letters(r),), _char),
    Family("remove_char", ("remove every occurrence of $c from a string",
                           "delete all $c characters from a string",
                           "return a string without any $c"),
           {"s": _STR}, "return $s.replace($c, '')",
           ("remove_char", "strip_char", "delete_char", "drop_letter"),
           lambda r, c: (_letters(r),), _char, _MAKE),
    Family("repeat_string", ("repeat a string $k times",
                             "return a string concatenated with itself $k times",
                             "build a string made of $k copies of a given string"),
           {"s": _STR}, "return $s * $k", ("repeat", "repeat_string", "copies", "duplicate"),
           lambda r, c: (_letters(r, "abcxyz", (1, 3)),), _k(2, 4), _MAKE),
    Family("count_vowels", ("count the vowels in the string $s",
                            "find how many vowels $s contains",
                            "return the number of letters of $s that are vowels"),
           {"s": _STR},
           "count = 0\nfor ch in $s:\n    if ch in 'aeiou':\n        count += 1\nreturn count",
           ("count_vowels", "vowels", "num_vowels", "vowel_count"),
           lambda r, c: (r.choice(_WORDS),)),
    Family("starts_with", ("check whether a string starts with $c",
                           "check if the first letter of a string is $c",
                           "return True if a string begins with $c"),
           {"s": _STR}, "return $s.startswith($c)",
           ("starts_with", "begins_with", "first_is", "starts"),
           lambda r, c: (_letters(r),), _char, _CHECK),
    Family("join_words", ("join a list of words with $sep between them",
                          "combine the strings of a list into one string separated by $sep",
                          "concatenate the items of a list of strings, putting $sep in between"),
           {"ws": _WORD_LIST}, "return $sep.join($ws)",
           ("join_words", "join", "combine", "concat_all"),
           lambda r, c: (_words(r),), lambda r: {"sep": r.choice(("-", ", ", " ", "_", "+"))},
           _MAKE),
    Family("word_count", ("count the words in the sentence $s",
                          "find how many space-separated words $s has",
                          "return the number of words in the string $s"),
           {"s": _SENTENCE}, "return len($s.split())",
           ("word_count", "count_words", "num_words", "words_in"),
           lambda r, c: (" ".join(_words(r, (1, 4))),)),
    Family("initials", ("build a string from the first letters of the words in $ws",
                        "return the initials of the words in $ws joined together",
                        "make a string of the first character of each word of $ws"),
           {"ws": _WORD_LIST}, "result = ''\nfor w in $ws:\n    result += w[0]\nreturn result",
           ("initials", "first_letters", "acronym", "heads"),
           lambda r, c: (_words(r, (2, 5)),), prefixes=_MAKE),
    # dicts
    Family("char_freq", ("count how often each character occurs in $s, as a dictionary",
                         "build a dictionary mapping each character of $s to its count",
                         "return a dict of character frequencies of $s"),
           {"s": _STR},
           "counts = {}\nfor ch in $s:\n    counts[ch] = counts.get(ch, 0) + 1\nreturn counts",
           ("char_freq", "char_counts", "frequencies", "letter_counts"),
           lambda r, c: (_letters(r, "abc", (2, 5)),), prefixes=_MAKE),
    Family("dict_get", ("return the value of key $key in a dictionary, or $k if it is missing",
                        "look up $key in a dictionary, returning $k when it is absent",
                        "get the entry for $key from a dict, defaulting to $k"),
           {"d": _DICT}, "return $d.get($key, $k)", ("lookup", "get_value", "fetch", "value_of"),
           lambda r, c: (_dict(r, "abcd", (1, 3)),),
           lambda r: {"key": r.choice("abc"), "k": r.choice((-1, 0, 10, 100))}),
    Family("dict_sum", ("find the sum of all values in the dictionary $d",
                        "add up the values of $d", "return the total of the values stored in $d"),
           {"d": _DICT}, "return sum($d.values())",
           ("dict_sum", "sum_values", "total_values", "values_total"),
           lambda r, c: (_dict(r),)),
    Family("keys_above", ("return the keys of a dictionary whose values are greater than $k",
                          "list the keys of a dict that map to a value above $k",
                          "find which keys of a dictionary have values exceeding $k"),
           {"d": _DICT}, "return [key for key in $d if $d[key] > $k]",
           ("keys_above", "keys_over", "big_keys", "select_keys"),
           lambda r, c: (_dict(r, size=(2, 4)),), _k(2, 15)),
)


def _normal_text(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def _normal_code(code: str) -> str:
    return "\n".join(line.rstrip() for line in code.strip().splitlines())


def _asserts(family: Family, fname: str, code: str, consts: dict,
             rng: random.Random) -> tuple[str, ...]:
    """`ASSERTS` asserts on distinct random inputs, with expected values computed by running
    the reference: distinct expected values where `_PATIENCE` draws find them, and never all
    equal."""
    scope: dict = {}
    exec(compile(code, f"<pocket {family.name}>", "exec"), scope)  # our template, not user code
    function = scope[fname]
    lines: list[str] = []
    outputs: list[str] = []
    calls: set[str] = set()
    for draw in range(_MAX_DRAWS):
        args = family.inputs(rng, consts)
        call = f"{fname}({', '.join(map(repr, args))})"
        if call in calls:
            continue
        output = repr(function(*args))
        line = f"assert {call} == {output}"
        if len(line) > MAX_ASSERT_CHARS or (output in outputs and draw < _PATIENCE):
            continue
        calls.add(call)
        lines.append(line)
        outputs.append(output)
        if len(lines) == ASSERTS:
            if len(set(outputs)) > 1:
                return tuple(lines)
            lines.pop()
            outputs.pop()
    raise RuntimeError(f"pocket family {family.name}: no {ASSERTS} varied tests drawn")


def _draw(family: Family, rng: random.Random) -> tuple[str, str, str, dict]:
    """A random instance of a family: its text, code, function name and constants."""
    consts = family.consts(rng)
    names: dict[str, str] = {}
    for slot, vocabulary in family.params.items():
        names[slot] = rng.choice([n for n in vocabulary if n not in names.values()])
    fname = rng.choice(family.prefixes) + rng.choice(family.cores)
    mapping = {"f": fname, **names, **{key: repr(value) for key, value in consts.items()}}
    text = f"{rng.choice(_OPENERS)} {Template(rng.choice(family.texts)).substitute(mapping)}."
    return text, Template(family.code).substitute(mapping), fname, consts


def _generate(split: str, seed: int, seen_texts: set[str], seen_codes: set[str],
              ) -> list[MBPPTask]:
    """One split; a drawn text or code in the seen sets is redrawn. Held-out splits add
    theirs to the seen sets, train does not."""
    rng = random.Random((seed << 2) + _SPLIT_ORDER.index(split))
    tasks = []
    for i in range(SPLIT_SIZES[split]):
        family = FAMILIES[i % len(FAMILIES)]
        for _ in range(_MAX_DRAWS):
            text, code, fname, consts = _draw(family, rng)
            text_key, code_key = _normal_text(text), _normal_code(code)
            if text_key not in seen_texts and code_key not in seen_codes:
                break
        else:
            raise RuntimeError(f"pocket family {family.name}: no fresh {split} task drawn")
        if split != "train":
            seen_texts.add(text_key)
            seen_codes.add(code_key)
        tasks.append(MBPPTask(task_id=TASK_ID_BASE[split] + i + 1, text=text, code=code,
                              test_list=_asserts(family, fname, code, consts, rng)))
    return tasks


def pocket_split(split: str, *, seed: int = 0) -> list[MBPPTask]:
    """The tasks of one split ("train", "validation" or "test") of the pocket benchmark."""
    if split not in SPLIT_SIZES:
        raise DataError(f"unknown pocket split {split!r}; choose from {sorted(SPLIT_SIZES)}")
    seen_texts: set[str] = set()
    seen_codes: set[str] = set()
    for earlier in _SPLIT_ORDER[: _SPLIT_ORDER.index(split)]:
        _generate(earlier, seed, seen_texts, seen_codes)
    return _generate(split, seed, seen_texts, seen_codes)
