-- qmp.heap: the loop's timer heap.
local heap = require "qmp.heap"

describe("qmp.heap", function()
  it("gives back 1,000 random times in order, with their items and tags", function()
    local h, rng = heap.new(), 12345
    local function random()
      rng = (rng * 1103515245 + 12345) % 2147483648
      return rng / 2147483648
    end
    local expect = {}
    for i = 1, 1000 do
      local t = math.floor(random() * 100) / 10   -- repeated times too
      h:push(t, "item" .. i, i)
      expect[i] = t
    end
    table.sort(expect)
    assert.equal(1000, h:size())
    for i = 1, 1000 do
      local t, item, tag = h:peek()
      assert.equal(expect[i], t)
      assert.equal("item" .. tag, item)
      h:pop()
    end
    assert.equal(0, h:size())
    assert.is_nil(h:peek())
    h:pop()   -- popping an empty heap does nothing
    assert.equal(0, h:size())
  end)

  it("keeps only what filter keeps, still in order", function()
    local h = heap.new()
    for i = 20, 1, -1 do h:push(i, i % 3 == 0 and "stale" or "live", i) end
    h:filter(function(item) return item == "live" end)
    local got = {}
    while h:peek() do
      local t, item = h:peek()
      assert.equal("live", item)
      got[#got + 1] = t
      h:pop()
    end
    assert.same({ 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 19, 20 }, got)
  end)
end)
