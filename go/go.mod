module github.com/imgtool/imgtool-go

go 1.19
