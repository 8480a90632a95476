-- Sends each request with the cookie of one of the sessions listed, one
-- Cookie header a line, in the file named by LOADTEST_COOKIES, taking
-- them in turn, so that every request loads and commits an existing
-- session.
local cookies = {}
for line in io.lines(os.getenv("LOADTEST_COOKIES")) do
  cookies[#cookies + 1] = line
end
local n = 0
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  -- Threads start at different places in the list.
  n = id * 997 % #cookies
end

function request()
  n = n % #cookies + 1
  return wrk.format(nil, nil, { ["Cookie"] = cookies[n] })
end
