--- A binary min-heap of (time, item, tag), for the loop's timers.
--   local h = heap.new()
--   h:push(t, item, tag); local t, item, tag = h:peek(); h:pop()
-- Three parallel arrays, no table per entry: a loop of thousands of
-- clients pushes one entry per client timer.  Entries are never removed
-- from the middle: their owner tells a stale one by its tag when it comes
-- out (lazy deletion), and rebuilds the heap when stale ones pile up.
local floor = math.floor

local Heap = { __name = "qmp.Heap" }
Heap.__index = Heap

local function new()
  return setmetatable({ n = 0, at = {}, item = {}, tag = {} }, Heap)
end

local function swap(h, i, j)
  local at, item, tag = h.at, h.item, h.tag
  at[i], at[j] = at[j], at[i]
  item[i], item[j] = item[j], item[i]
  tag[i], tag[j] = tag[j], tag[i]
end

local function up(h, i)
  local at = h.at
  while i > 1 do
    local parent = floor(i / 2)
    if at[parent] <= at[i] then return end
    swap(h, i, parent)
    i = parent
  end
end

local function down(h, i)
  local at, n = h.at, h.n
  while true do
    local l, smallest = 2 * i, i
    if l <= n and at[l] < at[smallest] then smallest = l end
    if l + 1 <= n and at[l + 1] < at[smallest] then smallest = l + 1 end
    if smallest == i then return end
    swap(h, i, smallest)
    i = smallest
  end
end

function Heap:push(t, item, tag)
  local n = self.n + 1
  self.n = n
  self.at[n], self.item[n], self.tag[n] = t, item, tag
  up(self, n)
end

--- The earliest entry: t, item, tag; nothing when empty.
function Heap:peek()
  if self.n > 0 then return self.at[1], self.item[1], self.tag[1] end
end

--- Remove the earliest entry.
function Heap:pop()
  local n = self.n
  if n == 0 then return end
  swap(self, 1, n)
  self.at[n], self.item[n], self.tag[n] = nil, nil, nil
  self.n = n - 1
  down(self, 1)
end

--- Keep only the entries for which keep(item, tag) is true.
function Heap:filter(keep)
  local at, item, tag, m = self.at, self.item, self.tag, 0
  for i = 1, self.n do
    if keep(item[i], tag[i]) then
      m = m + 1
      at[m], item[m], tag[m] = at[i], item[i], tag[i]
    end
  end
  for i = m + 1, self.n do at[i], item[i], tag[i] = nil, nil, nil end
  self.n = m
  for i = floor(m / 2), 1, -1 do down(self, i) end
end

function Heap:size()
  return self.n
end

return { new = new }
