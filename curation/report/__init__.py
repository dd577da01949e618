"""`lvd report`: what a curation run did, as numbers (stats.json) and as one offline HTML page."""

STAGE = "report"
